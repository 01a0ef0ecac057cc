// SPDX-License-Identifier: GPL-2.0
/* The cheapest possible tc program: the floor that benchmarks divide by. */
#include "common.h"

SEC("tc")
int pass_all(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
