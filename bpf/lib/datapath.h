/* datapath.h — the steps the hooks share after a verdict is known.
 *
 * API:
 *   int l7g_frag_nonfirst(struct l7g_flow *f)
 *       1 when a non-first fragment belongs to an allowed first fragment
 *       (l7g_frags entry for (family, proto, id, saddr, daddr), not expired).
 *   int l7g_finish(struct __sk_buff *skb, __u8 hook, struct l7g_flow *f,
 *                  __u8 verdict, __u16 proxy_port, __u32 endpoint_id,
 *                  __u32 src_id, __u32 dst_id)
 *       for an allowed packet: records first fragments (a redirected flow's
 *       fragments are dropped: DROP_FRAG_REDIRECT), performs the redirect
 *       (fail closed) or marks the packet MARK_JUDGED; returns the tc action.
 */
#ifndef L7G_DATAPATH_H
#define L7G_DATAPATH_H

#include "maps.h"
#include "events.h"
#include "redirect.h"

static __always_inline void l7g_frag_key(struct l7g_flow *f, struct l7g_frag_key *k)
{
    k->family = f->family;
    k->proto = f->proto;
    k->id = f->frag_id;
    __builtin_memcpy(k->saddr, f->saddr, 16);
    __builtin_memcpy(k->daddr, f->daddr, 16);
}

static __always_inline int l7g_frag_nonfirst(struct l7g_flow *f)
{
    struct l7g_frag_key k = {};
    struct l7g_frag_entry *e;

    l7g_frag_key(f, &k);
    e = l7g_frags.lookup(&k);
    if (!e || e->expires_ns < bpf_ktime_get_ns())
        return 0;
    f->sport = e->sport;
    f->dport = e->dport;
    return 1;
}

static __always_inline int l7g_finish(struct __sk_buff *skb, __u8 hook, struct l7g_flow *f,
                                      __u8 verdict, __u16 proxy_port, __u32 endpoint_id,
                                      __u32 src_id, __u32 dst_id)
{
    __u16 reason = 0;

    if (f->frag == FRAG_FIRST) {
        struct l7g_frag_key k = {};
        struct l7g_frag_entry e = {};

        if (verdict == VERDICT_REDIRECT)
            return l7g_drop(hook, skb->ifindex, f, DROP_FRAG_REDIRECT, endpoint_id, src_id, dst_id);
        l7g_frag_key(f, &k);
        e.expires_ns = bpf_ktime_get_ns() + l7g_cfg(CFG_FRAG_NS, DEFAULT_FRAG_NS);
        e.sport = f->sport;
        e.dport = f->dport;
        l7g_frags.update(&k, &e);
    }
    if (verdict == VERDICT_REDIRECT) {
        if (l7g_redirect(skb, f, proxy_port, &reason) < 0)
            return l7g_drop(hook, skb->ifindex, f, reason, endpoint_id, src_id, dst_id);
        return TC_ACT_OK;
    }
    skb->mark = (skb->mark & ~MARK_MASK) | MARK_JUDGED;
    return TC_ACT_OK;
}

#endif
