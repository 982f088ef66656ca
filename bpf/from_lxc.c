/* from_lxc.c — tc ingress of a workload's host-side veth: the pod's egress.
 *
 * 1. parse (malformed -> drop); non-IP passes, and so do NDP/MLD that stay on
 *    their link (lib/local.h; others are judged like any ICMPv6);
 * 2. the endpoint by ifindex (none -> drop DROP_UNKNOWN_ENDPOINT);
 * 3. source-address check: the source's ipcache entry must carry this
 *    endpoint's id (else DROP_SOURCE_SPOOFED);
 * 4. non-first fragments pass only when tied to an allowed first fragment;
 * 5. conntrack: replies pass;
 * 6. TCP/UDP straight to a node address on a proxy port -> drop
 *    (DROP_PROXY_PORT_DIRECT, lib/proxyport.h), before any verdict;
 * 7. established flows keep their verdict (and proxy port) until the policy
 *    changes (CT_STALE: decided again);
 * 8. new flows: the endpoint's egress policy towards the destination's
 *    identity (ipcache; miss = world) and, when the destination is a local
 *    endpoint, that endpoint's ingress policy from this endpoint's identity —
 *    the node's own addresses are the host endpoint (HOST_ENDPOINT_ID): a pod
 *    to the node meets the host's ingress policy (host policies) — also on a
 *    node address the ipcache does not know (the node's FIB: lib/local.h);
 * 9. allowed -> conntrack entry, then redirect to the proxy or pass.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/datapath.h"
#include "lib/proxyport.h"
#include "lib/local.h"

int l7g_from_lxc(struct __sk_buff *skb)
{
    struct l7g_flow f = {};
    struct l7g_endpoint ep;
    struct l7g_endpoint *epp;
    struct l7g_ipcache_value src, dst;
    struct l7g_ct_entry ct;
    struct l7g_decision de = {}, di = {}, d = {};
    __u32 ifindex = skb->ifindex;
    __u16 reason = 0;
    int res = CT_NEW;

    epp = l7g_endpoints.lookup(&ifindex);
    if (l7g_parse(skb, &f, &reason) < 0)
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, reason, epp ? epp->endpoint_id : 0, 0, 0);
    if (f.family == 0 || (f.pass && l7g_stays_on_link(skb, &f)))
        return TC_ACT_OK;
    if (!epp)
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, DROP_UNKNOWN_ENDPOINT, 0, 0, 0);
    __builtin_memcpy(&ep, epp, sizeof(ep));

    l7g_ipcache_get(f.family, f.saddr, &src);
    if (src.endpoint_id != ep.endpoint_id)
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, DROP_SOURCE_SPOOFED, ep.endpoint_id,
                        ep.identity, 0);
    l7g_ipcache_get(f.family, f.daddr, &dst);

    if (f.frag == FRAG_NONFIRST) {
        if (!l7g_frag_nonfirst(&f))
            return l7g_drop(HOOK_FROM_LXC, ifindex, &f, DROP_FRAG_NO_FIRST, ep.endpoint_id,
                            ep.identity, dst.identity);
        skb->mark = (skb->mark & ~MARK_MASK) | MARK_JUDGED;
        return TC_ACT_OK;
    }

    if (f.ct_ok) {
        res = l7g_ct_lookup(&f, &ct);
        if (res == CT_REPLY)
            return l7g_finish(skb, HOOK_FROM_LXC, &f, VERDICT_ALLOW, 0, ep.endpoint_id,
                              ep.identity, dst.identity);
    }
    if (l7g_proxy_port_direct(skb, &f, dst.identity))
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, DROP_PROXY_PORT_DIRECT, ep.endpoint_id,
                        ep.identity, dst.identity);
    if (f.ct_ok) {
        if (res == CT_FORWARD)
            return l7g_finish(skb, HOOK_FROM_LXC, &f, ct.verdict, ct.proxy_port, ep.endpoint_id,
                              ep.identity, dst.identity);
        if (res == CT_STALE)
            l7g_ct_delete(&f);  /* decided again below under the current policy */
    }

    /* A node address the ipcache does not know (a link-local address, one on
     * another interface) is the node all the same: the host's ingress policy. */
    if (!dst.endpoint_id && l7g_host_unlisted(skb, &f))
        dst.endpoint_id = HOST_ENDPOINT_ID;
    l7g_policy_decide(&ep, DIR_EGRESS, dst.identity, &f, &de);
    di.verdict = VERDICT_ALLOW;
    if (dst.endpoint_id &&
        l7g_endpoint_decide(dst.endpoint_id, DIR_INGRESS, ep.identity, &f, &di) < 0)
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, DROP_ENDPOINT_NOT_READY, ep.endpoint_id,
                        ep.identity, dst.identity);
    l7g_combine(&de, &di, &d);
    if (d.verdict == VERDICT_DROP)
        return l7g_drop(HOOK_FROM_LXC, ifindex, &f, d.reason, d.endpoint_id, ep.identity,
                        dst.identity);
    l7g_verdict_event(HOOK_FROM_LXC, ifindex, &f, d.verdict, d.reason, d.endpoint_id, ep.identity,
                      dst.identity, d.proxy_port);
    if (f.ct_ok)
        l7g_ct_create(&f, d.verdict, d.proxy_port, ep.endpoint_id, ep.identity, dst.identity, 0);
    return l7g_finish(skb, HOOK_FROM_LXC, &f, d.verdict, d.proxy_port, d.endpoint_id, ep.identity,
                      dst.identity);
}
