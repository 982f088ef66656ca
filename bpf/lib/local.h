/* local.h — is a packet for the node itself?
 *
 * The ipcache knows the node's addresses that the agent lists (the Node's
 * addresses, the pod gateways). The node has others: IPv6 link-local
 * addresses (every veth's, the uplink's), addresses on other interfaces. A
 * packet to one of them is delivered to the node's sockets all the same, so
 * the hooks ask the node's FIB where the ipcache has no answer.
 *
 * API:
 *   int l7g_fib_local(struct __sk_buff *skb, struct l7g_flow *f)
 *     the node's FIB, looked up with no mark from the ingress device: 1 when
 *     it would deliver the packet locally (local, broadcast or anycast address:
 *     BPF_FIB_LKUP_RET_NOT_FWDED) or forwarding is off on that device (only
 *     local delivery is possible); -1 when the lookup failed; else 0.
 *   int l7g_host_unlisted(struct __sk_buff *skb, struct l7g_flow *f)
 *     1 when a host endpoint exists (a host policy selects the node) and the
 *     packet, unicast to this device (pkt_type host), is for the node by its
 *     FIB: the caller judges it as traffic to the host endpoint. Call it only
 *     when the ipcache gave the destination no endpoint id.
 *   int l7g_stays_on_link(struct __sk_buff *skb, struct l7g_flow *f)
 *     for ICMPv6 neighbour discovery and MLD (f->pass, passed without policy):
 *     1 when the message cannot leave its link through the node — its
 *     destination is link-local (fe80::/10) or multicast (ff00::/8), or the
 *     node delivers it (NUD to one of the node's global addresses). Otherwise
 *     it would be forwarded, and a message of those types carries any payload
 *     from any source: the hooks judge it like any other ICMPv6.
 */
#ifndef L7G_LOCAL_H
#define L7G_LOCAL_H

#include "common.h"
#include "maps.h"

#define L7G_FIB_NOT_FWDED    4   /* BPF_FIB_LKUP_RET_NOT_FWDED */
#define L7G_FIB_FWD_DISABLED 6   /* BPF_FIB_LKUP_RET_FWD_DISABLED */
#define L7G_PACKET_HOST      0   /* skb->pkt_type: unicast to this device */
#define L7G_PACKET_LOOPBACK  5   /* skb->pkt_type: the node's own multicast looped back */

static __always_inline int l7g_fib_local(struct __sk_buff *skb, struct l7g_flow *f)
{
    struct bpf_fib_lookup p = {};
    long rc;

    p.ifindex = skb->ifindex;
    p.l4_protocol = f->proto;
    p.sport = f->sport;
    p.dport = f->dport;
    if (f->family == L7G_AF_INET) {
        p.family = L7G_AF_INET;
        __builtin_memcpy(&p.ipv4_src, f->saddr, 4);
        __builtin_memcpy(&p.ipv4_dst, f->daddr, 4);
    } else {
        p.family = L7G_AF_INET6;
        __builtin_memcpy(p.ipv6_src, f->saddr, 16);
        __builtin_memcpy(p.ipv6_dst, f->daddr, 16);
    }
    rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
    if (rc < 0)
        return -1;
    return rc == L7G_FIB_NOT_FWDED || rc == L7G_FIB_FWD_DISABLED;
}

static __always_inline int l7g_host_unlisted(struct __sk_buff *skb, struct l7g_flow *f)
{
    __u32 hid = HOST_ENDPOINT_ID;

    if (skb->pkt_type != L7G_PACKET_HOST || !l7g_endpoint_ids.lookup(&hid))
        return 0;
    return l7g_fib_local(skb, f) == 1;
}

static __always_inline int l7g_stays_on_link(struct __sk_buff *skb, struct l7g_flow *f)
{
    if (f->daddr[0] == 0xff || (f->daddr[0] == 0xfe && (f->daddr[1] & 0xc0) == 0x80))
        return 1;
    return l7g_fib_local(skb, f) == 1;
}

#endif
