/* common.h — constants shared by every l7gate tc program.
 *
 * API:
 *   - reserved identities (IDENTITY_*), policy directions (DIR_*), policy
 *     actions (ACT_*), endpoint flags (EP_F_*), skb marks (MARK_*), config
 *     indices (CFG_*) and their defaults;
 *   - L7G_HTONS/L7G_NTOHS/L7G_HTONL (x86 little endian only);
 *   - struct l7g_flow: what the parser extracts from a packet.
 * Everything here is ABI with bpf/maps.py; a test checks the layouts.
 */
#ifndef L7G_COMMON_H
#define L7G_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

#include "reasons.h"

#define L7G_HTONS(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define L7G_NTOHS(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define L7G_HTONL(x) ((__u32)__builtin_bswap32((__u32)(x)))

#define L7G_AF_INET  2
#define L7G_AF_INET6 10

/* Reserved identities (Cilium numbering). */
#define IDENTITY_HOST       1
#define IDENTITY_WORLD      2   /* ipcache miss, both families */
#define IDENTITY_WORLD_IPV4 9
#define IDENTITY_WORLD_IPV6 10

/* The node's host endpoint (host policies, Cilium's host firewall): its entry in l7g_endpoint_ids
 * (identity IDENTITY_HOST, enforcement flags) and its policy entries use this id, which no ifindex can
 * have (ifindexes are positive ints). The node's own addresses carry it in the ipcache, so a packet to
 * the node meets the host's ingress policy like a packet to a local pod meets the pod's. Without an
 * entry (no agent has written one) the host is not enforced. Mirrored in bpf/maps.py. */
#define HOST_ENDPOINT_ID 0xfffffffe

/* Policy directions (policy key .dir). */
#define DIR_INGRESS 0
#define DIR_EGRESS  1

/* Policy actions (policy value .action). 0 = no entry. */
#define ACT_NONE     0
#define ACT_ALLOW    1
#define ACT_DENY     2
#define ACT_REDIRECT 3

/* Endpoint flags (endpoint value .flags). */
#define EP_F_INGRESS_ENFORCED 0x1
#define EP_F_EGRESS_ENFORCED  0x2
#define EP_F_AUDIT            0x4

/* skb marks. MARK_MASK selects the bits l7gate owns.
 * MARK_TO_PROXY: set on packets assigned to a proxy socket; an ip rule
 *   "fwmark MARK_TO_PROXY/MARK_MASK lookup PROXY_ROUTE_TABLE" routes them to lo.
 * MARK_FROM_PROXY: proxies set SO_MARK on their upstream sockets; packets with
 *   it were judged at L7 and are allowed (and tracked) by the to-lxc hook.
 * Both can be overridden through the config map (CFG_FROM_PROXY_MARK/MASK). */
#define MARK_MASK        0x0f00
#define MARK_TO_PROXY    0x0200
#define MARK_FROM_PROXY  0x0a00
/* MARK_JUDGED: set by the tc ingress hooks on packets they allowed, so the
 * to-lxc hook does not judge them a second time (marks are scrubbed when a
 * packet crosses a netns through a veth, so pods cannot forge it). */
#define MARK_JUDGED      0x0100

/* The node's proxy ports (Envoy listeners, DNS proxy sockets) are not a range:
 * the agent writes each port its proxies use into l7g_proxy_ports (maps.h)
 * before a proxy listens on it or anything is redirected to it, and removes
 * it only after nothing listens there any more. lib/proxyport.h drops TCP/UDP
 * sent straight to a node address on one of them (DROP_PROXY_PORT_DIRECT);
 * every other port of the node (kubelet 10250, ...) is left alone. */

/* Config array map indices (u64 values; 0 = use the default). */
#define CFG_VERDICT_EVENTS      0   /* != 0: emit an event for every policy verdict */
#define CFG_CT_TCP_SYN_NS       1
#define CFG_CT_TCP_EST_NS       2
#define CFG_CT_TCP_FIN_NS       3
#define CFG_CT_UDP_NS           4
#define CFG_CT_OTHER_NS         5   /* ICMP and other protocols */
#define CFG_FROM_PROXY_MARK     6
#define CFG_FROM_PROXY_MASK     7
#define CFG_FRAG_NS             8
#define CFG_POLICY_REV          9   /* bumped by the agent on every policy change */
#define CFG_MAX                 16

#define SEC_NS 1000000000ULL
#define DEFAULT_CT_TCP_SYN_NS (60 * SEC_NS)
#define DEFAULT_CT_TCP_EST_NS (21600 * SEC_NS)
#define DEFAULT_CT_TCP_FIN_NS (10 * SEC_NS)
#define DEFAULT_CT_UDP_NS     (60 * SEC_NS)
#define DEFAULT_CT_OTHER_NS   (60 * SEC_NS)
#define DEFAULT_FRAG_NS       (30 * SEC_NS)

/* Fragment state of a packet (l7g_flow.frag). */
#define FRAG_NONE     0
#define FRAG_FIRST    1
#define FRAG_NONFIRST 2

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* l7g_flow.ct_ok: 0 = not tracked. */
#define CT_OK_TRACK 1
#define CT_OK_MATCH 2   /* ICMP echo replies: a reply never starts a flow */

/* What the parser extracts. Addresses are in network byte order; an IPv4
 * address occupies the first 4 bytes of the 16 (the rest zero). */
struct l7g_flow {
    __u8  family;      /* L7G_AF_INET or L7G_AF_INET6; 0 = not IP */
    __u8  proto;       /* L4 protocol (after IPv6 extension headers) */
    __u8  tcp_flags;
    __u8  frag;        /* FRAG_* */
    __be16 sport;      /* TCP/UDP ports; ICMP echo: the echo id in both */
    __be16 dport;
    __be16 pol_port;   /* port used for policy: dport, or the ICMP type */
    __u8  ct_ok;       /* CT_OK_TRACK: may create and match conntrack; CT_OK_MATCH: match only */
    __u8  pass;        /* 1 for traffic passed without policy (NDP, MLD) */
    __u32 frag_id;
    __u32 len;
    __u8  saddr[16];
    __u8  daddr[16];
};

/* The socket-lookup tuple of a flow's own direction; returns its length, which picks the family for
 * bpf_sk*_lookup_* (sizeof(t->ipv4) or sizeof(t->ipv6); a wrong length silently never matches). */
static __always_inline __u32 l7g_flow_tuple(const struct l7g_flow *f, struct bpf_sock_tuple *t)
{
    if (f->family == L7G_AF_INET) {
        __builtin_memcpy(&t->ipv4.saddr, f->saddr, 4);
        __builtin_memcpy(&t->ipv4.daddr, f->daddr, 4);
        t->ipv4.sport = f->sport;
        t->ipv4.dport = f->dport;
        return sizeof(t->ipv4);
    }
    __builtin_memcpy(t->ipv6.saddr, f->saddr, 16);
    __builtin_memcpy(t->ipv6.daddr, f->daddr, 16);
    t->ipv6.sport = f->sport;
    t->ipv6.dport = f->dport;
    return sizeof(t->ipv6);
}

#endif
