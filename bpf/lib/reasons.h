/* reasons.h — drop reasons, verdicts and event types of the l7gate datapath.
 *
 * API: every drop the tc programs take carries one DROP_* code in its event
 * (struct l7g_event.reason). The numbers are ABI: user space mirrors them in
 * bpf/reasons.py (a test parses this file and checks both agree). Append new
 * codes; never renumber.
 */
#ifndef L7G_REASONS_H
#define L7G_REASONS_H

/* Drop reasons (event.reason). 0 = no drop. */
#define DROP_NONE                    0
#define DROP_POLICY_DENIED           1   /* no policy entry allows it, direction enforced */
#define DROP_POLICY_DENY_RULE        2   /* an explicit deny entry matched */
#define DROP_SOURCE_SPOOFED          3   /* source IP is not one of the endpoint's IPs */
#define DROP_UNKNOWN_ENDPOINT        4   /* hook's ifindex has no endpoints entry */
#define DROP_ENDPOINT_NOT_READY      5   /* ipcache names a local endpoint with no entry */
#define DROP_MALFORMED_IPV4          6   /* bad version/ihl/total length, truncated */
#define DROP_MALFORMED_IPV6          7   /* truncated IPv6 header or extension header */
#define DROP_MALFORMED_L4            8   /* truncated or invalid TCP/UDP/ICMP header */
#define DROP_IPV4_OPTION_SOURCE_ROUTE 9  /* LSRR/SSRR option */
#define DROP_IPV4_OPTIONS_MALFORMED  10  /* option length invalid or too many options */
#define DROP_IPV6_EXT_UNSUPPORTED    11  /* AH, mobility, HIP, shim6, experimental */
#define DROP_IPV6_EXT_CHAIN_TOO_LONG 12  /* more extension headers than we walk */
#define DROP_IPV6_ROUTING_HEADER     13  /* routing header with segments left */
#define DROP_FRAG_NO_FIRST           14  /* non-first fragment without an allowed first one */
#define DROP_FRAG_REDIRECT           15  /* fragment of a flow redirected to a proxy */
#define DROP_PROXY_NOT_FOUND         16  /* redirect: no proxy socket (fail closed) */
#define DROP_SK_ASSIGN_FAILED        17  /* redirect: bpf_sk_assign refused */
#define DROP_UNSUPPORTED_L3          18  /* reserved */
#define DROP_PROXY_PORT_DIRECT       19  /* TCP/UDP straight to a node address on a proxy port */

/* Verdicts (event.verdict, conntrack entry verdict). */
#define VERDICT_NONE     0
#define VERDICT_ALLOW    1
#define VERDICT_DROP     2
#define VERDICT_REDIRECT 3
#define VERDICT_AUDIT    4   /* would be dropped; endpoint in audit mode */

/* Event types (event.type). */
#define EVENT_DROP    1
#define EVENT_VERDICT 2

/* Hooks (event.hook). */
#define HOOK_FROM_LXC    1   /* tc ingress of a host-side veth: the pod's egress */
#define HOOK_TO_LXC      2   /* tc egress of a host-side veth: into the pod */
#define HOOK_FROM_UPLINK 3   /* tc ingress of the node's uplink */
#define HOOK_TO_UPLINK   4   /* tc egress of the node's uplink: the host's egress */

#endif
