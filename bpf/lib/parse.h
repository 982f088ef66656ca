/* parse.h — packet parsing into struct l7g_flow.
 *
 * API:
 *   int l7g_parse(struct __sk_buff *skb, struct l7g_flow *f, __u16 *reason)
 *     returns 0 when f is filled (f->family == 0 for non-IP traffic, which the
 *     hooks pass), -1 when the packet must be dropped (*reason = DROP_*).
 * Rules:
 *   - IPv4: version, ihl >= 5, total length >= ihl*4 and within the skb;
 *     options are walked (bounded): LSRR/SSRR dropped, bad lengths dropped.
 *   - IPv6: extension headers walked (at most L7G_MAX_EXT): hop-by-hop (only
 *     first), routing (dropped when segments left != 0), destination options,
 *     fragment; AH/mobility/HIP/shim6/experimental dropped as unsupported.
 *   - Fragments: f->frag = FRAG_FIRST (L4 header parsed) or FRAG_NONFIRST (no
 *     L4 header; ports 0; the caller ties it to a first fragment or drops it).
 *   - TCP/UDP/SCTP: ports; TCP also flags (doff >= 5 checked).
 *   - ICMP/ICMPv6: f->pol_port = type; the echo id is an echo request's
 *     source port (it may create conntrack) and an echo reply's destination
 *     port (it only matches conntrack); ICMPv6 NDP/MLD set f->pass (the hooks
 *     pass them only while they stay on their link, lib/local.h).
 *   - Other protocols: ports 0, no conntrack ports, policy port 0.
 * All reads use bpf_skb_load_bytes, so truncation shows as a failed load.
 */
#ifndef L7G_PARSE_H
#define L7G_PARSE_H

#include "common.h"

#define L7G_MAX_EXT 6
#define L7G_MAX_IPV4_OPTS 16

struct l7g_ipv4hdr {
    __u8 vihl;
    __u8 tos;
    __be16 tot_len;
    __be16 id;
    __be16 frag_off;
    __u8 ttl;
    __u8 proto;
    __be16 check;
    __u8 saddr[4];
    __u8 daddr[4];
};

struct l7g_ipv6hdr {
    __be32 vtcfl;
    __be16 payload_len;
    __u8 nexthdr;
    __u8 hop_limit;
    __u8 saddr[16];
    __u8 daddr[16];
};

static __always_inline int l7g_parse_l4(struct __sk_buff *skb, struct l7g_flow *f, __u32 off,
                                        __u16 *reason)
{
    __u8 b[14];

    if (f->frag == FRAG_NONFIRST) {
        f->ct_ok = 0;
        return 0;
    }
    switch (f->proto) {
    case IPPROTO_TCP:
        if (bpf_skb_load_bytes(skb, off, b, 14) < 0)
            goto bad;
        if ((b[12] >> 4) < 5)
            goto bad;
        __builtin_memcpy(&f->sport, &b[0], 2);
        __builtin_memcpy(&f->dport, &b[2], 2);
        f->tcp_flags = b[13];
        f->pol_port = f->dport;
        f->ct_ok = 1;
        return 0;
    case IPPROTO_UDP:
    case IPPROTO_SCTP:
        if (bpf_skb_load_bytes(skb, off, b, 8) < 0)
            goto bad;
        __builtin_memcpy(&f->sport, &b[0], 2);
        __builtin_memcpy(&f->dport, &b[2], 2);
        f->pol_port = f->dport;
        f->ct_ok = 1;
        return 0;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6: {
        __u8 echo_req = f->proto == IPPROTO_ICMP ? 8 : 128;
        __u8 echo_rep = f->proto == IPPROTO_ICMP ? 0 : 129;
        if (bpf_skb_load_bytes(skb, off, b, 8) < 0)
            goto bad;
        f->pol_port = L7G_HTONS(b[0]);
        /* The echo id is the request's source "port" and the reply's destination
         * "port", so a request is never the reverse of a request: a peer that was
         * pinged cannot ping back as if it were answering. A reply only matches
         * (CT_OK_MATCH): it never starts a flow. */
        if (b[0] == echo_req) {
            __builtin_memcpy(&f->sport, &b[4], 2);
            f->dport = 0;
            f->ct_ok = CT_OK_TRACK;
        } else if (b[0] == echo_rep) {
            f->sport = 0;
            __builtin_memcpy(&f->dport, &b[4], 2);
            f->ct_ok = CT_OK_MATCH;
        } else {
            f->dport = f->pol_port;
            f->ct_ok = 0;
        }
        /* Neighbour discovery and MLD: link-local plumbing, never policed. */
        if (f->proto == IPPROTO_ICMPV6 &&
            ((b[0] >= 130 && b[0] <= 137) || b[0] == 143))
            f->pass = 1;
        return 0;
    }
    default:
        f->ct_ok = 0;
        return 0;
    }
bad:
    *reason = DROP_MALFORMED_L4;
    return -1;
}

static __always_inline int l7g_parse_ipv4(struct __sk_buff *skb, struct l7g_flow *f, __u16 *reason)
{
    struct l7g_ipv4hdr ip;
    __u32 hlen, off, end;
    __u16 fo;
    int i;

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        goto bad;
    if ((ip.vihl >> 4) != 4)
        goto bad;
    hlen = (ip.vihl & 0xf) * 4;
    if (hlen < 20 || L7G_NTOHS(ip.tot_len) < hlen || ETH_HLEN + L7G_NTOHS(ip.tot_len) > skb->len)
        goto bad;
    f->family = L7G_AF_INET;
    f->proto = ip.proto;
    f->len = L7G_NTOHS(ip.tot_len);
    __builtin_memcpy(f->saddr, ip.saddr, 4);
    __builtin_memcpy(f->daddr, ip.daddr, 4);

    /* Options: walk them, never skip them unchecked. */
    off = ETH_HLEN + 20;
    end = ETH_HLEN + hlen;
    for (i = 0; i < L7G_MAX_IPV4_OPTS; i++) {
        __u8 opt[2];
        if (off >= end)
            break;
        if (bpf_skb_load_bytes(skb, off, opt, 1) < 0)
            goto bad;
        if (opt[0] == 0) { /* end of options */
            off = end;
            break;
        }
        if (opt[0] == 1) { /* no-op */
            off += 1;
            continue;
        }
        if (off + 2 > end || bpf_skb_load_bytes(skb, off, opt, 2) < 0)
            goto badopt;
        if (opt[1] < 2 || off + opt[1] > end)
            goto badopt;
        if (opt[0] == 131 || opt[0] == 137) {
            *reason = DROP_IPV4_OPTION_SOURCE_ROUTE;
            return -1;
        }
        off += opt[1];
    }
    if (off < end)
        goto badopt;

    fo = L7G_NTOHS(ip.frag_off);
    if (fo & 0x1fff)
        f->frag = FRAG_NONFIRST;
    else if (fo & 0x2000)
        f->frag = FRAG_FIRST;
    f->frag_id = L7G_NTOHS(ip.id);
    return l7g_parse_l4(skb, f, end, reason);
bad:
    *reason = DROP_MALFORMED_IPV4;
    return -1;
badopt:
    *reason = DROP_IPV4_OPTIONS_MALFORMED;
    return -1;
}

static __always_inline int l7g_parse_ipv6(struct __sk_buff *skb, struct l7g_flow *f, __u16 *reason)
{
    struct l7g_ipv6hdr ip;
    __u32 off = ETH_HLEN + 40;
    __u8 nh;
    int i;

    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        goto bad;
    if ((ip.vtcfl & 0xf0) != 0x60)
        goto bad;
    if (ETH_HLEN + 40 + L7G_NTOHS(ip.payload_len) > skb->len)
        goto bad;
    f->family = L7G_AF_INET6;
    f->len = 40 + L7G_NTOHS(ip.payload_len);
    __builtin_memcpy(f->saddr, ip.saddr, 16);
    __builtin_memcpy(f->daddr, ip.daddr, 16);
    nh = ip.nexthdr;

    /* L7G_MAX_EXT extension headers, plus one pass to reach the upper-layer header */
    for (i = 0; i <= L7G_MAX_EXT; i++) {
        __u8 h[8];
        switch (nh) {
        case 0:   /* hop-by-hop: only right after the fixed header */
            if (i != 0)
                goto bad;
            /* fallthrough */
        case 60:  /* destination options */
            if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
                goto bad;
            nh = h[0];
            off += ((__u32)h[1] + 1) * 8;
            if (off > ETH_HLEN + f->len)  /* the header claims more than the packet holds */
                goto bad;
            continue;
        case 43:  /* routing */
            if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
                goto bad;
            if (h[3] != 0) {
                *reason = DROP_IPV6_ROUTING_HEADER;
                return -1;
            }
            nh = h[0];
            off += ((__u32)h[1] + 1) * 8;
            if (off > ETH_HLEN + f->len)
                goto bad;
            continue;
        case 44: { /* fragment */
            __u16 fo;
            __u32 id;
            if (bpf_skb_load_bytes(skb, off, h, 8) < 0)
                goto bad;
            nh = h[0];
            off += 8;
            fo = ((__u16)h[2] << 8) | h[3];
            __builtin_memcpy(&id, &h[4], 4);
            f->frag_id = id;
            if (fo & 0xfff8) {
                f->frag = FRAG_NONFIRST;
                f->proto = nh;
                return l7g_parse_l4(skb, f, off, reason);
            }
            if (fo & 1)
                f->frag = FRAG_FIRST;
            continue;
        }
        case 51:  /* AH */
        case 135: /* mobility */
        case 139: /* HIP */
        case 140: /* shim6 */
        case 253:
        case 254:
            *reason = DROP_IPV6_EXT_UNSUPPORTED;
            return -1;
        default:
            f->proto = nh;
            return l7g_parse_l4(skb, f, off, reason);
        }
    }
    *reason = DROP_IPV6_EXT_CHAIN_TOO_LONG;
    return -1;
bad:
    *reason = DROP_MALFORMED_IPV6;
    return -1;
}

static __always_inline int l7g_parse(struct __sk_buff *skb, struct l7g_flow *f, __u16 *reason)
{
    if (skb->protocol == L7G_HTONS(ETH_P_IP))
        return l7g_parse_ipv4(skb, f, reason);
    if (skb->protocol == L7G_HTONS(ETH_P_IPV6))
        return l7g_parse_ipv6(skb, f, reason);
    f->family = 0;
    return 0;
}

#endif
