/* conntrack.h — connection tracking in the pinned LRU map l7g_ct.
 *
 * API:
 *   int  l7g_ct_lookup(struct l7g_flow *f, struct l7g_ct_entry *out)
 *        CT_NEW, CT_FORWARD (packet goes the way the flow started) or CT_REPLY;
 *        a hit refreshes the entry (counters, flags, expiry); an expired
 *        entry is deleted and reported as CT_NEW. A forward hit whose verdict
 *        was taken under an older policy revision (CFG_POLICY_REV, bumped by
 *        the agent on every policy change) is CT_STALE: the caller deletes it
 *        (l7g_ct_delete) and decides again, so a policy change applies to
 *        established flows too (denied now: dropped; redirected now: sent to
 *        the proxy) — replies keep passing while the entry lives.
 *   void l7g_ct_delete(struct l7g_flow *f)
 *   void l7g_ct_create(struct l7g_flow *f, __u8 verdict, __u16 proxy_port,
 *                      __u32 endpoint_id, __u32 src_id, __u32 dst_id, __u8 flags)
 * Lifetimes (config map, ns; 0 = default): TCP before a reply is seen
 * CFG_CT_TCP_SYN_NS (60 s), established CFG_CT_TCP_EST_NS (6 h), after FIN or
 * RST CFG_CT_TCP_FIN_NS (10 s); UDP CFG_CT_UDP_NS (60 s); ICMP echo and other
 * protocols CFG_CT_OTHER_NS (60 s).
 * Only packets with f->ct_ok (TCP, UDP, SCTP, ICMP echo) are tracked; an ICMP
 * echo reply (CT_OK_MATCH) is looked up but never creates an entry.
 */
#ifndef L7G_CONNTRACK_H
#define L7G_CONNTRACK_H

#include "maps.h"

#define CT_NEW     0
#define CT_FORWARD 1
#define CT_REPLY   2
#define CT_STALE   3

static __always_inline __u64 l7g_ct_lifetime(__u8 proto, __u8 flags)
{
    if (proto == IPPROTO_TCP) {
        if (flags & CT_F_CLOSING)
            return l7g_cfg(CFG_CT_TCP_FIN_NS, DEFAULT_CT_TCP_FIN_NS);
        if (!(flags & CT_F_SEEN_REPLY))
            return l7g_cfg(CFG_CT_TCP_SYN_NS, DEFAULT_CT_TCP_SYN_NS);
        return l7g_cfg(CFG_CT_TCP_EST_NS, DEFAULT_CT_TCP_EST_NS);
    }
    if (proto == IPPROTO_UDP)
        return l7g_cfg(CFG_CT_UDP_NS, DEFAULT_CT_UDP_NS);
    return l7g_cfg(CFG_CT_OTHER_NS, DEFAULT_CT_OTHER_NS);
}

static __always_inline int l7g_ct_refresh(struct l7g_ct_key *k, struct l7g_flow *f,
                                          struct l7g_ct_entry *out, int reply)
{
    struct l7g_ct_entry *e = l7g_ct.lookup(k);
    __u64 now = bpf_ktime_get_ns();
    __u8 flags;

    if (!e)
        return 0;
    if (e->expires_ns < now) {
        l7g_ct.delete(k);
        return 0;
    }
    if (!reply && e->rev != (__u32)l7g_cfg(CFG_POLICY_REV, 0))
        return 2;
    flags = e->flags;
    if (reply) {
        flags |= CT_F_SEEN_REPLY;
        __sync_fetch_and_add(&e->pkts_rev, 1);
    } else {
        __sync_fetch_and_add(&e->pkts_fwd, 1);
    }
    if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
        flags |= CT_F_CLOSING;
    e->flags = flags;
    e->last_seen_ns = now;
    e->expires_ns = now + l7g_ct_lifetime(f->proto, flags);
    __builtin_memcpy(out, e, sizeof(*out));
    return 1;
}

/* The conntrack key of the flow's own direction (the originator's tuple). */
static __always_inline void l7g_ct_forward_key(struct l7g_flow *f, struct l7g_ct_key *k)
{
    k->family = f->family;
    k->proto = f->proto;
    k->sport = f->sport;
    k->dport = f->dport;
    __builtin_memcpy(k->saddr, f->saddr, 16);
    __builtin_memcpy(k->daddr, f->daddr, 16);
}

static __always_inline int l7g_ct_lookup(struct l7g_flow *f, struct l7g_ct_entry *out)
{
    struct l7g_ct_key k = {};
    int res;

    l7g_ct_forward_key(f, &k);
    res = l7g_ct_refresh(&k, f, out, 0);
    if (res == 2)
        return CT_STALE;
    if (res)
        return CT_FORWARD;
    k.sport = f->dport;
    k.dport = f->sport;
    __builtin_memcpy(k.saddr, f->daddr, 16);
    __builtin_memcpy(k.daddr, f->saddr, 16);
    if (l7g_ct_refresh(&k, f, out, 1))
        return CT_REPLY;
    return CT_NEW;
}

static __always_inline void l7g_ct_create(struct l7g_flow *f, __u8 verdict, __u16 proxy_port,
                                          __u32 endpoint_id, __u32 src_id, __u32 dst_id, __u8 flags)
{
    struct l7g_ct_key k = {};
    struct l7g_ct_entry e = {};
    __u64 now = bpf_ktime_get_ns();

    if (f->ct_ok != CT_OK_TRACK)  /* an echo reply only matches an existing flow */
        return;
    l7g_ct_forward_key(f, &k);
    if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
        flags |= CT_F_CLOSING;
    e.expires_ns = now + l7g_ct_lifetime(f->proto, flags);
    e.last_seen_ns = now;
    e.pkts_fwd = 1;
    e.src_identity = src_id;
    e.dst_identity = dst_id;
    e.endpoint_id = endpoint_id;
    e.proxy_port = proxy_port;
    e.verdict = verdict;
    e.flags = flags;
    e.rev = (__u32)l7g_cfg(CFG_POLICY_REV, 0);
    l7g_ct.update(&k, &e);
}

static __always_inline void l7g_ct_delete(struct l7g_flow *f)
{
    struct l7g_ct_key k = {};

    l7g_ct_forward_key(f, &k);
    l7g_ct.delete(&k);
}

#endif
