/* Drop counters and the event ring buffer read by `membrane monitor`. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline void count_drop(__u32 reason, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(&mb_drops, &reason);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct flow *f, __u8 type, __u8 dir, __u8 reason,
				       __u32 peer, const struct policy_value *entry)
{
	struct event *e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->peer_identity = peer;
	e->rule_id = entry ? entry->rule_id : 0;
	e->match_kind = entry ? entry->kind : MATCH_NONE;
	e->len = skb->len;
	__builtin_memcpy(e->saddr, f->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, f->daddr, sizeof(e->daddr));
	e->sport = f->sport;
	e->dport = f->dport;
	e->type = type;
	e->dir = dir;
	e->reason = reason;
	e->family = f->family;
	e->proto = f->proto;
	e->icmp_type = f->icmp_type;
	e->icmp_code = f->icmp_code;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u32 config_flags(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&mb_config, &zero);
	return c ? c->flags : 0;
}
