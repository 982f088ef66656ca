/* from_uplink.c — tc ingress of the node's uplink: other nodes and the world.
 *
 * Only packets whose destination is a local endpoint (ipcache value with an
 * endpoint id: a pod, or the node itself — the host endpoint, HOST_ENDPOINT_ID,
 * whose ingress policy is the host policies'; while it exists, also a node
 * address the ipcache does not know, by the node's FIB: lib/local.h) are
 * judged; everything else is not ours and passes. NDP/MLD pass only while they
 * stay on their link. A source that is one of the node's addresses or a local
 * pod's cannot come from the uplink: DROP_SOURCE_SPOOFED (looped-back packets
 * of the node's own, pkt_type loopback, excepted). TCP/UDP straight to a node address on a proxy port is
 * dropped first (DROP_PROXY_PORT_DIRECT, lib/proxyport.h): only redirected
 * traffic may reach the node's proxies, whatever a host policy allows.
 * Replies of pod-originated flows pass via conntrack; established flows keep
 * their verdict until the policy changes (then they are decided again); new flows get the destination's ingress policy with the
 * source identity from the ipcache (miss = world). Non-first fragments pass
 * only when tied to an allowed first fragment.
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

int l7g_from_uplink(struct __sk_buff *skb)
{
    struct l7g_flow f = {};
    struct l7g_ipcache_value src, dst;
    struct l7g_ct_entry ct;
    struct l7g_decision d = {};
    __u32 ifindex = skb->ifindex;
    __u32 id;
    __u16 reason = 0;
    int res;

    if (l7g_parse(skb, &f, &reason) < 0)
        return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, reason, 0, 0, 0);
    if (f.family == 0 || (f.pass && l7g_stays_on_link(skb, &f)))
        return TC_ACT_OK;
    l7g_ipcache_get(f.family, f.daddr, &dst);
    l7g_ipcache_get(f.family, f.saddr, &src);
    /* A node address the ipcache does not know is the node all the same. */
    if (!dst.endpoint_id && l7g_host_unlisted(skb, &f))
        dst.endpoint_id = HOST_ENDPOINT_ID;
    /* The node's own addresses and local pods' never come from the uplink:
     * such a source would get the node's or that pod's rights. */
    if (dst.endpoint_id && skb->pkt_type != L7G_PACKET_LOOPBACK &&
        (src.endpoint_id || src.identity == IDENTITY_HOST))
        return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, DROP_SOURCE_SPOOFED, dst.endpoint_id,
                        src.identity, dst.identity);
    if (!dst.endpoint_id || dst.endpoint_id == HOST_ENDPOINT_ID) {
        if (l7g_proxy_port_direct(skb, &f, dst.identity))
            return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, DROP_PROXY_PORT_DIRECT, 0,
                            src.identity, dst.identity);
        if (!dst.endpoint_id)
            return TC_ACT_OK;
    }

    if (f.frag == FRAG_NONFIRST) {
        if (!l7g_frag_nonfirst(&f))
            return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, DROP_FRAG_NO_FIRST, dst.endpoint_id,
                            src.identity, dst.identity);
        skb->mark = (skb->mark & ~MARK_MASK) | MARK_JUDGED;
        return TC_ACT_OK;
    }
    if (f.ct_ok) {
        res = l7g_ct_lookup(&f, &ct);
        if (res == CT_REPLY)
            return l7g_finish(skb, HOOK_FROM_UPLINK, &f, VERDICT_ALLOW, 0, dst.endpoint_id,
                              src.identity, dst.identity);
        if (res == CT_FORWARD)
            return l7g_finish(skb, HOOK_FROM_UPLINK, &f, ct.verdict, ct.proxy_port,
                              dst.endpoint_id, src.identity, dst.identity);
        if (res == CT_STALE)
            l7g_ct_delete(&f);  /* decided again below under the current policy */
    }

    id = dst.endpoint_id;
    if (l7g_endpoint_decide(id, DIR_INGRESS, src.identity, &f, &d) < 0)
        return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, DROP_ENDPOINT_NOT_READY, id, src.identity,
                        dst.identity);
    if (d.verdict == VERDICT_DROP)
        return l7g_drop(HOOK_FROM_UPLINK, ifindex, &f, d.reason, id, src.identity, dst.identity);
    l7g_verdict_event(HOOK_FROM_UPLINK, ifindex, &f, d.verdict, d.reason, id, src.identity,
                      dst.identity, d.proxy_port);
    if (f.ct_ok)
        l7g_ct_create(&f, d.verdict, d.proxy_port, id, src.identity, dst.identity, 0);
    return l7g_finish(skb, HOOK_FROM_UPLINK, &f, d.verdict, d.proxy_port, id, src.identity,
                      dst.identity);
}
