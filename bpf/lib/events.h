/* events.h — drop and verdict events to user space (ring buffer l7g_events).
 *
 * API:
 *   void l7g_emit(__u8 type, __u8 hook, __u32 ifindex, struct l7g_flow *f,
 *                 __u8 verdict, __u16 reason, __u32 endpoint_id,
 *                 __u32 src_id, __u32 dst_id, __u16 proxy_port)
 *   void l7g_drop_event(...)      every drop (always emitted)
 *   void l7g_verdict_event(...)   policy verdicts of new flows, only when
 *                                 config CFG_VERDICT_EVENTS != 0
 * Layout: struct l7g_event in maps.h (bpf/maps.py: Event).
 */
#ifndef L7G_EVENTS_H
#define L7G_EVENTS_H

#include "maps.h"

static __always_inline void l7g_emit(__u8 type, __u8 hook, __u32 ifindex, struct l7g_flow *f,
                                     __u8 verdict, __u16 reason, __u32 endpoint_id, __u32 src_id,
                                     __u32 dst_id, __u16 proxy_port)
{
    struct l7g_event ev = {};

    ev.ts_ns = bpf_ktime_get_ns();
    ev.type = type;
    ev.hook = hook;
    ev.family = f->family;
    ev.proto = f->proto;
    ev.verdict = verdict;
    ev.reason = reason;
    ev.sport = f->sport;
    ev.dport = f->dport;
    ev.proxy_port = proxy_port;
    ev.ifindex = ifindex;
    ev.endpoint_id = endpoint_id;
    ev.src_identity = src_id;
    ev.dst_identity = dst_id;
    __builtin_memcpy(ev.saddr, f->saddr, 16);
    __builtin_memcpy(ev.daddr, f->daddr, 16);
    l7g_events.ringbuf_output(&ev, sizeof(ev), 0);
}

static __always_inline int l7g_drop(__u8 hook, __u32 ifindex, struct l7g_flow *f, __u16 reason,
                                    __u32 endpoint_id, __u32 src_id, __u32 dst_id)
{
    l7g_emit(EVENT_DROP, hook, ifindex, f, VERDICT_DROP, reason, endpoint_id, src_id, dst_id, 0);
    return TC_ACT_SHOT;
}

static __always_inline void l7g_verdict_event(__u8 hook, __u32 ifindex, struct l7g_flow *f,
                                              __u8 verdict, __u16 reason, __u32 endpoint_id,
                                              __u32 src_id, __u32 dst_id, __u16 proxy_port)
{
    if (l7g_cfg(CFG_VERDICT_EVENTS, 0))
        l7g_emit(EVENT_VERDICT, hook, ifindex, f, verdict, reason, endpoint_id, src_id, dst_id,
                 proxy_port);
}

#endif
