/* SPDX-License-Identifier: GPL-2.0 */
/* Kernel #defines that vmlinux.h (BTF) cannot carry. */
#ifndef BPFIPT_CONSTS_H
#define BPFIPT_CONSTS_H

#define ETH_P_IP 0x0800
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_ALEN 6

#define IP_CE 0x8000
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define IPTOS_TOS_MASK 0x1e
#define IPTOS_PREC_INTERNETCONTROL 0xc0

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1

#define PACKET_HOST 0
#define PACKET_BROADCAST 1
#define PACKET_MULTICAST 2
#define PACKET_OTHERHOST 3

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_REDIRECT 5
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_TIMESTAMPREPLY 14
#define NR_ICMP_TYPES 18

/* skb->ip_summed */
#define CHECKSUM_NONE 0
#define CHECKSUM_UNNECESSARY 1
#define CHECKSUM_COMPLETE 2
#define CHECKSUM_PARTIAL 3

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7

#define BPF_F_INGRESS_FLAG 1

#define AF_INET 2

/* Default TTL of packets the kernel builds (net.ipv4.ip_default_ttl). */
#define DEFAULT_TTL 64

#endif
