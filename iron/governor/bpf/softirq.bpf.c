// SPDX-License-Identifier: GPL-2.0
/*
 * iron-governor's eBPF meter: time spent in each softirq type, per CPU, from the tp_btf
 * softirq_entry/softirq_exit tracepoints. Counts softirqs run in ksoftirqd as well as those
 * run on the way out of an interrupt or at local_bh_enable(), which /proc/stat cannot separate.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NR_SOFTIRQS 10

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_SOFTIRQS);
	__type(key, __u32);
	__type(value, __u64);
} vec_ns SEC(".maps");

SEC("tp_btf/softirq_entry")
int softirq_entry(unsigned long long *ctx)
{
	__u32 k = 0;
	__u64 *s = bpf_map_lookup_elem(&start, &k);

	if (s)
		*s = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_exit")
int softirq_exit(unsigned long long *ctx)
{
	__u32 k = 0, vec = (__u32)ctx[0];
	__u64 *s = bpf_map_lookup_elem(&start, &k), *v;

	if (!s || !*s || vec >= NR_SOFTIRQS)
		return 0;
	v = bpf_map_lookup_elem(&vec_ns, &vec);
	if (v)
		*v += bpf_ktime_get_ns() - *s;
	*s = 0;
	return 0;
}
