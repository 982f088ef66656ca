/* maps.h — the datapath's maps and their key/value layouts.
 *
 * API (all pinned under L7G_PIN_DIR = /sys/fs/bpf/l7gate/<node>, given by the
 * loader with -DL7G_PIN_DIR="..."; mirrored by ctypes in bpf/maps.py):
 *   l7g_endpoints    hash   u32 ifindex      -> struct l7g_endpoint
 *   l7g_endpoint_ids hash   u32 endpoint id  -> struct l7g_endpoint
 *   l7g_ipcache      lpm    struct l7g_ipcache_key -> struct l7g_ipcache_value
 *                    prefixlen = 32 + address prefix length (family + pad
 *                    bytes always match exactly). An endpoint's own addresses
 *                    are /32 or /128 entries carrying its endpoint id: that is
 *                    the source-address check.
 *   l7g_policy       lpm    struct l7g_policy_key -> struct l7g_policy_value
 *                    prefixlen: 72 = any protocol (and port), 80 = protocol,
 *                    any port, 80+n = protocol and the first n bits of the
 *                    destination port (network order).
 *   l7g_ct           lru    struct l7g_ct_key -> struct l7g_ct_entry
 *                    key = the originator's tuple (forward direction)
 *   l7g_frags        lru    struct l7g_frag_key -> struct l7g_frag_entry
 *   l7g_config       array  u32 CFG_* -> u64
 *   l7g_devices      hash   u32 ifindex -> u32 DEV_* (what is attached where,
 *                    so a new loader re-attaches its programs)
 *   l7g_proxy_ports  hash   struct l7g_proxy_port_key -> u32 (reserved, 1):
 *                    the ports the node's proxies listen on, per protocol;
 *                    direct traffic to them is dropped (lib/proxyport.h)
 *   l7g_events       ringbuf of struct l7g_event (not pinned: each loader
 *                    reads its own)
 */
#ifndef L7G_MAPS_H
#define L7G_MAPS_H

#include "common.h"

#ifndef L7G_PIN_DIR
#error "L7G_PIN_DIR must be defined by the loader"
#endif
#ifndef L7G_CT_MAX
#define L7G_CT_MAX 65536
#endif
#ifndef L7G_IPCACHE_MAX
#define L7G_IPCACHE_MAX 65536
#endif
#ifndef L7G_POLICY_MAX
#define L7G_POLICY_MAX 65536
#endif

#ifndef L7G_PROXY_PORTS_MAX
#define L7G_PROXY_PORTS_MAX 32768
#endif

#define DEV_ENDPOINT 1
#define DEV_UPLINK   2

struct l7g_endpoint {
    __u32 endpoint_id;
    __u32 identity;
    __u32 flags;       /* EP_F_* */
    __u32 ifindex;
};

struct l7g_ipcache_key {
    __u32 prefixlen;
    __u8  family;
    __u8  pad[3];
    __u8  addr[16];
};

struct l7g_ipcache_value {
    __u32 identity;
    __u32 endpoint_id; /* 0 = not a local endpoint */
    __u32 flags;       /* reserved */
};

struct l7g_policy_key {
    __u32 prefixlen;
    __u32 endpoint_id;
    __u32 peer_identity; /* 0 = any peer */
    __u8  dir;           /* DIR_* */
    __u8  proto;
    __be16 dport;        /* port, or ICMP type; network order */
};

struct l7g_policy_value {
    __u8  action;        /* ACT_* */
    __u8  pad;
    __u16 proxy_port;    /* host order; ACT_REDIRECT only */
};

struct l7g_proxy_port_key {
    __be16 port;         /* network order */
    __u8  proto;         /* IPPROTO_TCP or IPPROTO_UDP */
    __u8  pad;
};

struct l7g_ct_key {
    __u8  family;
    __u8  proto;
    __be16 sport;
    __be16 dport;
    __u16 pad;
    __u8  saddr[16];
    __u8  daddr[16];
};

#define CT_F_SEEN_REPLY 0x1
#define CT_F_CLOSING    0x2
#define CT_F_FROM_PROXY 0x4

struct l7g_ct_entry {
    __u64 expires_ns;    /* bpf_ktime_get_ns() deadline */
    __u64 last_seen_ns;
    __u64 pkts_fwd;
    __u64 pkts_rev;
    __u32 src_identity;
    __u32 dst_identity;
    __u32 endpoint_id;   /* endpoint whose hook created the entry */
    __u16 proxy_port;    /* host order; VERDICT_REDIRECT only */
    __u8  verdict;       /* VERDICT_ALLOW / VERDICT_REDIRECT / VERDICT_AUDIT */
    __u8  flags;         /* CT_F_* */
    __u32 rev;           /* CFG_POLICY_REV when the verdict was taken */
    __u32 pad;
};

struct l7g_frag_key {
    __u8  family;
    __u8  proto;
    __u16 pad;
    __u32 id;
    __u8  saddr[16];
    __u8  daddr[16];
};

struct l7g_frag_entry {
    __u64 expires_ns;
    __be16 sport;
    __be16 dport;
    __u32 pad;
};

struct l7g_event {
    __u64 ts_ns;
    __u8  type;          /* EVENT_* */
    __u8  hook;          /* HOOK_* */
    __u8  family;
    __u8  proto;
    __u8  verdict;       /* VERDICT_* */
    __u8  pad;
    __u16 reason;        /* DROP_* (also set for audited would-be drops) */
    __be16 sport;
    __be16 dport;
    __u16 proxy_port;
    __u16 pad2;
    __u32 ifindex;
    __u32 endpoint_id;
    __u32 src_identity;
    __u32 dst_identity;
    __u8  saddr[16];
    __u8  daddr[16];
};

BPF_TABLE_PINNED("hash", __u32, struct l7g_endpoint, l7g_endpoints, 4096, L7G_PIN_DIR "/endpoints");
BPF_TABLE_PINNED("hash", __u32, struct l7g_endpoint, l7g_endpoint_ids, 4096, L7G_PIN_DIR "/endpoint_ids");
BPF_TABLE_PINNED("lpm_trie", struct l7g_ipcache_key, struct l7g_ipcache_value, l7g_ipcache, L7G_IPCACHE_MAX,
                 L7G_PIN_DIR "/ipcache", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct l7g_policy_key, struct l7g_policy_value, l7g_policy, L7G_POLICY_MAX,
                 L7G_PIN_DIR "/policy", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct l7g_ct_key, struct l7g_ct_entry, l7g_ct, L7G_CT_MAX, L7G_PIN_DIR "/ct");
BPF_TABLE_PINNED("lru_hash", struct l7g_frag_key, struct l7g_frag_entry, l7g_frags, 8192, L7G_PIN_DIR "/frags");
BPF_TABLE_PINNED("array", __u32, __u64, l7g_config, CFG_MAX, L7G_PIN_DIR "/config");
BPF_TABLE_PINNED("hash", __u32, __u32, l7g_devices, 4096, L7G_PIN_DIR "/devices");
BPF_TABLE_PINNED("hash", struct l7g_proxy_port_key, __u32, l7g_proxy_ports, L7G_PROXY_PORTS_MAX,
                 L7G_PIN_DIR "/proxy_ports", BPF_F_NO_PREALLOC);
BPF_RINGBUF_OUTPUT(l7g_events, 64);

static __always_inline __u64 l7g_cfg(__u32 idx, __u64 dflt)
{
    __u64 *v = l7g_config.lookup(&idx);
    if (v && *v)
        return *v;
    return dflt;
}

#endif
