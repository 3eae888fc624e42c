//! Text output byte-identical to iptables 1.8.9: `-S`, `-L`, `iptables-save`.
