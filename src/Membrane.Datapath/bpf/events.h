/* Drop counters and the event ring buffer read by `membrane monitor`. */
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline void count(void *map, __u32 index, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void count_drop(__u32 dir, __u32 reason, __u32 len)
{
	__u32 index = (dir & 1) * REASON_MAX + (reason & (REASON_MAX - 1));
	struct counter *c = bpf_map_lookup_elem(&mb_drops, &index);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit_event(struct __sk_buff *skb, const struct flow *f, __u8 type, __u8 dir, __u8 reason,
				       __u32 peer, __u32 rule_id, __u8 match_kind)
{
	struct event *e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e) {
		count(&mb_stats, STAT_EVENTS_LOST, 0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->peer_identity = peer;
	e->rule_id = rule_id;
	e->match_kind = match_kind;
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

/* Counts a drop and reports it while a monitor listens. A global function: every drop site shares one verified
 * copy instead of inlining the event code (about 100 instructions a site, multiplied by the states reaching it).
 * At most five arguments, so direction, reason and match kind travel packed in one. */
__attribute__((noinline)) int drop_packet(struct __sk_buff *skb, const struct flow *f, __u32 packed, __u32 peer, __u32 rule_id)
{
	__u8 dir = packed & 0xff, reason = (packed >> 8) & 0xff, kind = (packed >> 16) & 0xff;
	count_drop(dir, reason, skb->len);
	if (f && (config_flags() & CONFIG_DROP_EVENTS))
		emit_event(skb, f, EVENT_DROP, dir, reason, peer, rule_id, kind);
	return TC_ACT_SHOT;
}
