/* redirect.h — hand a packet to a local proxy socket (bpf_sk_assign).
 *
 * API:
 *   int l7g_redirect(struct __sk_buff *skb, struct l7g_flow *f, __u16 proxy_port, __u16 *reason)
 *     0: socket assigned and skb->mark = MARK_TO_PROXY (under MARK_MASK);
 *     -1: drop with *reason (DROP_PROXY_NOT_FOUND, DROP_SK_ASSIGN_FAILED).
 * TCP: bpf_skc_lookup_tcp with the packet's own tuple; a non-listening socket
 * is the proxy's side of this very connection and gets the packet. Otherwise
 * (nothing, or some listener on the original port) the proxy's listener on
 * proxy_port is looked up (bound to 0.0.0.0 or [::] in the node's netns).
 * UDP: a connected socket with the packet's tuple, else the socket bound to
 * proxy_port. No socket -> fail closed.
 * Delivery needs policy routing: "fwmark MARK_TO_PROXY/MARK_MASK lookup T",
 * "local 0.0.0.0/0 dev lo table T" (and ::/0) — installed by bpf/attach.py.
 */
#ifndef L7G_REDIRECT_H
#define L7G_REDIRECT_H

#include "common.h"

static __always_inline int l7g_redirect(struct __sk_buff *skb, struct l7g_flow *f, __u16 proxy_port,
                                        __u16 *reason)
{
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk = 0;
    __u32 tlen;
    long err;

    tlen = l7g_flow_tuple(f, &t);

    if (f->proto == IPPROTO_TCP) {
        sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
        if (sk && sk->state == BPF_TCP_LISTEN) {
            bpf_sk_release(sk);
            sk = 0;
        }
        if (!sk) {
            if (f->family == L7G_AF_INET)
                t.ipv4.dport = L7G_HTONS(proxy_port);
            else
                t.ipv6.dport = L7G_HTONS(proxy_port);
            sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
            if (sk && sk->state != BPF_TCP_LISTEN) {
                bpf_sk_release(sk);
                sk = 0;
            }
        }
    } else if (f->proto == IPPROTO_UDP) {
        sk = bpf_sk_lookup_udp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
        if (sk && sk->dst_port == 0) {
            bpf_sk_release(sk);
            sk = 0;
        }
        if (!sk) {
            if (f->family == L7G_AF_INET)
                t.ipv4.dport = L7G_HTONS(proxy_port);
            else
                t.ipv6.dport = L7G_HTONS(proxy_port);
            sk = bpf_sk_lookup_udp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
        }
    }
    if (!sk) {
        *reason = DROP_PROXY_NOT_FOUND;
        return -1;
    }
    err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err) {
        *reason = DROP_SK_ASSIGN_FAILED;
        return -1;
    }
    skb->mark = (skb->mark & ~MARK_MASK) | MARK_TO_PROXY;
    return 0;
}

#endif
