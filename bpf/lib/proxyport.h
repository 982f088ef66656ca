/* proxyport.h — keep direct traffic off the node's proxy ports.
 *
 * The node's Envoy listeners and DNS proxy sockets listen on the wildcard
 * address, on the ports the agent lists in l7g_proxy_ports (maps.h): written
 * before a proxy listens on a port or anything is redirected to it, removed
 * only after nothing listens there any more. Only traffic the datapath
 * redirects (bpf_sk_assign; the packet keeps its original destination) may
 * reach them. A packet sent straight to a node address on a proxy port would
 * bypass the policy that the proxy enforces for redirected flows, and a
 * transparent Envoy listener would take the node address as the original
 * destination and connect to itself (a loop).
 *
 * API:
 *   int l7g_proxy_port_direct(struct __sk_buff *skb, struct l7g_flow *f,
 *                             __u32 dst_identity)
 *     1 when the packet must be dropped with DROP_PROXY_PORT_DIRECT:
 *     - TCP or UDP, (destination port, protocol) in l7g_proxy_ports — any
 *       other port of the node (kubelet's 10250, ...) is none of our business;
 *     - the destination is the node: the ipcache says IDENTITY_HOST, or the
 *       node's FIB (no mark, ingress device = skb->ifindex) would deliver it
 *       locally (local, broadcast or anycast address: BPF_FIB_LKUP_RET_NOT_FWDED),
 *       or forwarding is off on the ingress device (only local delivery is
 *       possible), or the lookup failed (fail closed);
 *     - and the packet is not part of a connection the node already has:
 *       TCP: a SYN without ACK, or no socket / only a listener for its tuple;
 *       UDP: no connected socket for its tuple.
 *     The hooks call it before conntrack forward hits and before policy (so
 *     no policy entry, not even a redirect, can send a packet for a node proxy
 *     port to a proxy), after conntrack reply hits.
 */
#ifndef L7G_PROXYPORT_H
#define L7G_PROXYPORT_H

#include "common.h"
#include "maps.h"
#include "local.h"

/* 1 when the node has a connection (not a listener, not an unconnected UDP
 * socket) for the packet's tuple: a reply or a continuation of a flow the
 * node takes part in. */
static __always_inline int l7g_node_has_connection(struct __sk_buff *skb, struct l7g_flow *f)
{
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk;
    __u32 tlen;
    int conn;

    if (f->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
        return 0;
    tlen = l7g_flow_tuple(f, &t);
    if (f->proto == IPPROTO_TCP) {
        sk = bpf_skc_lookup_tcp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        conn = sk->state != BPF_TCP_LISTEN;
    } else {
        sk = bpf_sk_lookup_udp(skb, &t, tlen, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        conn = sk->dst_port != 0;
    }
    bpf_sk_release(sk);
    return conn;
}

/* 1 when the agent listed (port, protocol) as one of the node's proxy ports. */
static __always_inline int l7g_is_proxy_port(const struct l7g_flow *f)
{
    struct l7g_proxy_port_key k = {};

    k.port = f->dport;
    k.proto = f->proto;
    return l7g_proxy_ports.lookup(&k) != 0;
}

static __always_inline int l7g_proxy_port_direct(struct __sk_buff *skb, struct l7g_flow *f,
                                                 __u32 dst_identity)
{
    if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
        return 0;
    if (!l7g_is_proxy_port(f))
        return 0;
    if (dst_identity != IDENTITY_HOST && l7g_fib_local(skb, f) == 0)  /* a failed lookup: fail closed */
        return 0;
    return !l7g_node_has_connection(skb, f);
}

#endif
