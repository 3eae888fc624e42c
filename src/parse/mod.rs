//! Parsing of iptables command lines and restore input into commands on the model.
