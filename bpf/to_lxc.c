/* to_lxc.c — tc egress of a workload's host-side veth: traffic into the pod.
 *
 * Packets already judged by a tc ingress hook (MARK_JUDGED) and replies or
 * established flows in conntrack pass. What remains started on the node:
 * - packets of a proxy's upstream socket (SO_MARK MARK_FROM_PROXY under the
 *   configured mask) were judged at L7: allowed and tracked;
 * - anything else is the host: the host's egress policy towards the pod's
 *   identity (host policies; not enforced without a host endpoint entry)
 *   combined with the pod's ingress policy with source identity IDENTITY_HOST;
 *   allowed flows are tracked so the pod's replies pass. A redirect entry
 *   cannot be honoured on egress and counts as allow.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/datapath.h"

int l7g_to_lxc(struct __sk_buff *skb)
{
    struct l7g_flow f = {};
    struct l7g_endpoint ep;
    struct l7g_endpoint *epp;
    struct l7g_ct_entry ct;
    struct l7g_decision d = {}, dh = {}, di = {};
    __u32 ifindex = skb->ifindex;
    __u32 mark = skb->mark;
    __u16 reason = 0;
    __u64 pmark, pmask;

    if ((mark & MARK_MASK) == MARK_JUDGED)
        return TC_ACT_OK;
    epp = l7g_endpoints.lookup(&ifindex);
    if (l7g_parse(skb, &f, &reason) < 0)
        return l7g_drop(HOOK_TO_LXC, ifindex, &f, reason, epp ? epp->endpoint_id : 0, 0, 0);
    if (f.family == 0 || f.pass)
        return TC_ACT_OK;
    if (!epp)
        return l7g_drop(HOOK_TO_LXC, ifindex, &f, DROP_UNKNOWN_ENDPOINT, 0, 0, 0);
    __builtin_memcpy(&ep, epp, sizeof(ep));

    if (f.frag == FRAG_NONFIRST) {
        if (!l7g_frag_nonfirst(&f))
            return l7g_drop(HOOK_TO_LXC, ifindex, &f, DROP_FRAG_NO_FIRST, ep.endpoint_id,
                            IDENTITY_HOST, ep.identity);
        return TC_ACT_OK;
    }
    if (f.ct_ok) {
        int res = l7g_ct_lookup(&f, &ct);

        if (res == CT_STALE) {
            l7g_ct_delete(&f);  /* decided again below under the current policy */
        } else if (res != CT_NEW) {
            if (f.frag == FRAG_FIRST)
                return l7g_finish(skb, HOOK_TO_LXC, &f, VERDICT_ALLOW, 0, ep.endpoint_id,
                                  IDENTITY_HOST, ep.identity);
            return TC_ACT_OK;
        }
    }

    pmark = l7g_cfg(CFG_FROM_PROXY_MARK, MARK_FROM_PROXY);
    pmask = l7g_cfg(CFG_FROM_PROXY_MASK, MARK_MASK);
    if ((mark & pmask) == pmark) {
        l7g_verdict_event(HOOK_TO_LXC, ifindex, &f, VERDICT_ALLOW, 0, ep.endpoint_id,
                          IDENTITY_HOST, ep.identity, 0);
        if (f.ct_ok)
            l7g_ct_create(&f, VERDICT_ALLOW, 0, ep.endpoint_id, IDENTITY_HOST, ep.identity,
                          CT_F_FROM_PROXY);
        return l7g_finish(skb, HOOK_TO_LXC, &f, VERDICT_ALLOW, 0, ep.endpoint_id, IDENTITY_HOST,
                          ep.identity);
    }

    l7g_policy_decide(&ep, DIR_INGRESS, IDENTITY_HOST, &f, &di);
    l7g_endpoint_decide(HOST_ENDPOINT_ID, DIR_EGRESS, ep.identity, &f, &dh);
    l7g_combine(&dh, &di, &d);
    if (d.verdict == VERDICT_DROP)
        return l7g_drop(HOOK_TO_LXC, ifindex, &f, d.reason, d.endpoint_id, IDENTITY_HOST,
                        ep.identity);
    if (d.verdict == VERDICT_REDIRECT) {
        d.verdict = VERDICT_ALLOW;
        d.proxy_port = 0;
    }
    l7g_verdict_event(HOOK_TO_LXC, ifindex, &f, d.verdict, d.reason, d.endpoint_id, IDENTITY_HOST,
                      ep.identity, 0);
    if (f.ct_ok)
        l7g_ct_create(&f, d.verdict, 0, ep.endpoint_id, IDENTITY_HOST, ep.identity, 0);
    return l7g_finish(skb, HOOK_TO_LXC, &f, d.verdict, 0, ep.endpoint_id, IDENTITY_HOST,
                      ep.identity);
}
