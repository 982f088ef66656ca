/* policy.h — ipcache lookups and policy verdicts.
 *
 * API:
 *   int  l7g_ipcache_get(__u8 family, __u8 *addr, struct l7g_ipcache_value *out)
 *        1 on a hit; on a miss *out = {IDENTITY_WORLD, 0, 0} and 0.
 *   void l7g_policy_decide(struct l7g_endpoint *ep, __u8 dir, __u32 peer,
 *                          struct l7g_flow *f, struct l7g_decision *d)
 *   void l7g_combine(struct l7g_decision *egress, struct l7g_decision *ingress,
 *                    struct l7g_decision *out)
 *   int  l7g_endpoint_decide(__u32 endpoint_id, __u8 dir, __u32 peer,
 *                            struct l7g_flow *f, struct l7g_decision *d)
 *        the policy of the endpoint with that id (l7g_endpoint_ids); -1 when it
 *        has no entry (DROP_ENDPOINT_NOT_READY for the caller) — except the host
 *        endpoint (HOST_ENDPOINT_ID), which without an entry is not enforced
 *        (allow: host policies apply once the agent wrote the host endpoint).
 *
 * Policy map semantics (the contract with bpf/policy_entries.py):
 *   Two longest-prefix lookups with the full key {endpoint, peer, dir,
 *   proto, dport}: one with the peer's identity, one with peer 0 ("any").
 *   - a DENY from either lookup            -> drop (DROP_POLICY_DENY_RULE)
 *   - else the peer-specific entry's action if there is one, else the
 *     any-peer entry's action (ALLOW, or REDIRECT with its proxy port)
 *   - else, when the endpoint enforces that direction (EP_F_*_ENFORCED)
 *     -> drop (DROP_POLICY_DENIED); otherwise allow.
 *   User space therefore writes peer-specific entries that already merge the
 *   any-peer decisions for the same ports.
 *   An endpoint with EP_F_AUDIT turns its drops into VERDICT_AUDIT (allowed,
 *   reported with the reason).
 * Combining the source's egress and the destination's ingress decision: a
 * drop from either wins; else the egress redirect, else the ingress redirect;
 * else audit; else allow.
 */
#ifndef L7G_POLICY_H
#define L7G_POLICY_H

#include "maps.h"

struct l7g_decision {
    __u8  verdict;      /* VERDICT_* */
    __u8  pad;
    __u16 reason;       /* DROP_* for DROP and AUDIT */
    __u16 proxy_port;
    __u16 pad2;
    __u32 endpoint_id;  /* endpoint whose policy decided */
};

static __always_inline int l7g_ipcache_get(__u8 family, __u8 *addr, struct l7g_ipcache_value *out)
{
    struct l7g_ipcache_key k = {};
    struct l7g_ipcache_value *v;

    k.prefixlen = family == L7G_AF_INET ? 32 + 32 : 32 + 128;
    k.family = family;
    __builtin_memcpy(k.addr, addr, 16);
    v = l7g_ipcache.lookup(&k);
    if (v) {
        __builtin_memcpy(out, v, sizeof(*out));
        return 1;
    }
    out->identity = IDENTITY_WORLD;
    out->endpoint_id = 0;
    out->flags = 0;
    return 0;
}

static __always_inline __u8 l7g_policy_lookup(__u32 ep, __u8 dir, __u32 peer, struct l7g_flow *f,
                                              __u16 *proxy_port)
{
    struct l7g_policy_key k = {};
    struct l7g_policy_value *vp, *va;
    __u8 ap = ACT_NONE, aa = ACT_NONE;
    __u16 pp = 0, pa = 0;

    k.prefixlen = 96;
    k.endpoint_id = ep;
    k.peer_identity = peer;
    k.dir = dir;
    k.proto = f->proto;
    k.dport = f->pol_port;
    vp = l7g_policy.lookup(&k);
    if (vp) {
        ap = vp->action;
        pp = vp->proxy_port;
    }
    k.peer_identity = 0;
    va = l7g_policy.lookup(&k);
    if (va) {
        aa = va->action;
        pa = va->proxy_port;
    }
    if (ap == ACT_DENY || aa == ACT_DENY)
        return ACT_DENY;
    if (ap != ACT_NONE) {
        *proxy_port = pp;
        return ap;
    }
    *proxy_port = pa;
    return aa;
}

static __always_inline void l7g_policy_decide(struct l7g_endpoint *ep, __u8 dir, __u32 peer,
                                              struct l7g_flow *f, struct l7g_decision *d)
{
    __u16 port = 0;
    __u8 act = l7g_policy_lookup(ep->endpoint_id, dir, peer, f, &port);
    __u32 enforced = dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED;
    __u8 drop = ep->flags & EP_F_AUDIT ? VERDICT_AUDIT : VERDICT_DROP;

    d->endpoint_id = ep->endpoint_id;
    d->proxy_port = 0;
    d->reason = DROP_NONE;
    if (act == ACT_DENY) {
        d->verdict = drop;
        d->reason = DROP_POLICY_DENY_RULE;
    } else if (act == ACT_ALLOW) {
        d->verdict = VERDICT_ALLOW;
    } else if (act == ACT_REDIRECT) {
        d->verdict = VERDICT_REDIRECT;
        d->proxy_port = port;
    } else if (ep->flags & enforced) {
        d->verdict = drop;
        d->reason = DROP_POLICY_DENIED;
    } else {
        d->verdict = VERDICT_ALLOW;
    }
}

static __always_inline int l7g_endpoint_decide(__u32 endpoint_id, __u8 dir, __u32 peer,
                                               struct l7g_flow *f, struct l7g_decision *d)
{
    __u32 id = endpoint_id;
    struct l7g_endpoint *ep = l7g_endpoint_ids.lookup(&id);
    struct l7g_endpoint copy;

    if (!ep) {
        if (endpoint_id != HOST_ENDPOINT_ID)
            return -1;
        d->verdict = VERDICT_ALLOW;
        d->reason = DROP_NONE;
        d->proxy_port = 0;
        d->endpoint_id = endpoint_id;
        return 0;
    }
    __builtin_memcpy(&copy, ep, sizeof(copy));
    l7g_policy_decide(&copy, dir, peer, f, d);
    return 0;
}

static __always_inline void l7g_combine(struct l7g_decision *e, struct l7g_decision *i,
                                        struct l7g_decision *out)
{
    if (e->verdict == VERDICT_DROP)
        *out = *e;
    else if (i->verdict == VERDICT_DROP)
        *out = *i;
    else if (e->verdict == VERDICT_REDIRECT)
        *out = *e;
    else if (i->verdict == VERDICT_REDIRECT)
        *out = *i;
    else if (e->verdict == VERDICT_AUDIT)
        *out = *e;
    else if (i->verdict == VERDICT_AUDIT)
        *out = *i;
    else
        *out = *e;
}

#endif
