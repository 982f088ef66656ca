/* to_uplink.c — tc egress of the node's uplink: the host's egress (host policies).
 *
 * A no-op until the agent wrote the host endpoint (HOST_ENDPOINT_ID in
 * l7g_endpoint_ids). Then:
 * 1. packets a tc ingress hook already judged (MARK_JUDGED: pods' traffic
 *    forwarded to the world) pass, and so does traffic whose source is not one
 *    of the node's own addresses (ipcache: neither the host endpoint's id nor
 *    identity host; a local address the ipcache does not know is not enforced);
 * 2. parse (malformed -> drop); non-IP and NDP/MLD pass; non-first fragments
 *    pass only when tied to an allowed first fragment;
 * 3. conntrack: replies (flows into the node, judged by from_uplink) pass;
 *    established flows keep their verdict until the policy changes;
 * 4. a proxy's upstream packets (SO_MARK MARK_FROM_PROXY: Envoy, the DNS
 *    proxy) were judged at L7 for the pod they serve: allowed and tracked, so
 *    no host policy cuts the node's own proxies;
 * 5. new flows: the host's egress policy towards the destination's identity
 *    (ipcache; miss = world); allowed flows are tracked, so their replies pass
 *    the host's ingress policy on the uplink.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/datapath.h"

int l7g_to_uplink(struct __sk_buff *skb)
{
    struct l7g_flow f = {};
    struct l7g_endpoint host;
    struct l7g_endpoint *hep;
    struct l7g_ipcache_value src, dst;
    struct l7g_ct_entry ct;
    struct l7g_decision d = {};
    __u32 ifindex = skb->ifindex;
    __u32 mark = skb->mark;
    __u32 hid = HOST_ENDPOINT_ID;
    __u16 reason = 0;
    __u64 pmark, pmask;
    int res;

    if ((mark & MARK_MASK) == MARK_JUDGED)
        return TC_ACT_OK;
    hep = l7g_endpoint_ids.lookup(&hid);
    if (!hep)
        return TC_ACT_OK;
    __builtin_memcpy(&host, hep, sizeof(host));
    if (l7g_parse(skb, &f, &reason) < 0)
        return l7g_drop(HOOK_TO_UPLINK, ifindex, &f, reason, HOST_ENDPOINT_ID, IDENTITY_HOST, 0);
    if (f.family == 0 || f.pass)
        return TC_ACT_OK;
    l7g_ipcache_get(f.family, f.saddr, &src);
    /* Any address the ipcache calls the node's (identity host), not only the host
     * endpoint's own: a node process may bind a pod gateway address. */
    if (src.endpoint_id != HOST_ENDPOINT_ID && src.identity != IDENTITY_HOST)
        return TC_ACT_OK;
    l7g_ipcache_get(f.family, f.daddr, &dst);

    if (f.frag == FRAG_NONFIRST) {
        if (!l7g_frag_nonfirst(&f))
            return l7g_drop(HOOK_TO_UPLINK, ifindex, &f, DROP_FRAG_NO_FIRST, HOST_ENDPOINT_ID,
                            IDENTITY_HOST, dst.identity);
        return TC_ACT_OK;
    }
    if (f.ct_ok) {
        res = l7g_ct_lookup(&f, &ct);
        if (res == CT_REPLY)
            return l7g_finish(skb, HOOK_TO_UPLINK, &f, VERDICT_ALLOW, 0, HOST_ENDPOINT_ID,
                              IDENTITY_HOST, dst.identity);
        if (res == CT_FORWARD)
            return l7g_finish(skb, HOOK_TO_UPLINK, &f, VERDICT_ALLOW, 0, HOST_ENDPOINT_ID,
                              IDENTITY_HOST, dst.identity);
        if (res == CT_STALE)
            l7g_ct_delete(&f);  /* decided again below under the current policy */
    }

    pmark = l7g_cfg(CFG_FROM_PROXY_MARK, MARK_FROM_PROXY);
    pmask = l7g_cfg(CFG_FROM_PROXY_MASK, MARK_MASK);
    if ((mark & pmask) == pmark) {
        l7g_verdict_event(HOOK_TO_UPLINK, ifindex, &f, VERDICT_ALLOW, 0, HOST_ENDPOINT_ID,
                          IDENTITY_HOST, dst.identity, 0);
        if (f.ct_ok)
            l7g_ct_create(&f, VERDICT_ALLOW, 0, HOST_ENDPOINT_ID, IDENTITY_HOST, dst.identity,
                          CT_F_FROM_PROXY);
        return l7g_finish(skb, HOOK_TO_UPLINK, &f, VERDICT_ALLOW, 0, HOST_ENDPOINT_ID,
                          IDENTITY_HOST, dst.identity);
    }

    l7g_policy_decide(&host, DIR_EGRESS, dst.identity, &f, &d);
    if (d.verdict == VERDICT_DROP)
        return l7g_drop(HOOK_TO_UPLINK, ifindex, &f, d.reason, HOST_ENDPOINT_ID, IDENTITY_HOST,
                        dst.identity);
    if (d.verdict == VERDICT_REDIRECT)  /* host policies have no L7: never written; allow */
        d.verdict = VERDICT_ALLOW;
    l7g_verdict_event(HOOK_TO_UPLINK, ifindex, &f, d.verdict, d.reason, HOST_ENDPOINT_ID,
                      IDENTITY_HOST, dst.identity, 0);
    if (f.ct_ok)
        l7g_ct_create(&f, d.verdict, 0, HOST_ENDPOINT_ID, IDENTITY_HOST, dst.identity, 0);
    return l7g_finish(skb, HOOK_TO_UPLINK, &f, d.verdict, 0, HOST_ENDPOINT_ID, IDENTITY_HOST,
                      dst.identity);
}
