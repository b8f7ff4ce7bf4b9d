/* See shim.h: one exported symbol per DPDK inline function the Rust side needs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_{get,set}affinity_np */
#endif
#include "shim.h"

uint16_t chc_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                              uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t chc_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                              uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *chc_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int chc_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void chc_rte_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

char *chc_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

char *chc_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_prepend(m, len);
}

char *chc_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_adj(m, len);
}

int chc_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_trim(m, len);
}

uint16_t chc_rte_pktmbuf_headroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_headroom(m);
}

uint16_t chc_rte_pktmbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

void *chc_rte_pktmbuf_mtod(const struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, void *);
}

uint32_t chc_rte_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_pkt_len(m);
}

uint16_t chc_rte_pktmbuf_data_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_data_len(m);
}

int chc_rte_pktmbuf_is_contiguous(const struct rte_mbuf *m)
{
	return rte_pktmbuf_is_contiguous(m);
}

int chc_rte_pktmbuf_linearize(struct rte_mbuf *m)
{
	return rte_pktmbuf_linearize(m);
}

const void *chc_rte_pktmbuf_read(const struct rte_mbuf *m, uint32_t off, uint32_t len, void *buf)
{
	return rte_pktmbuf_read(m, off, len, buf);
}

void chc_rte_pktmbuf_reset(struct rte_mbuf *m)
{
	rte_pktmbuf_reset(m);
}

struct rte_mbuf *chc_rte_pktmbuf_lastseg(struct rte_mbuf *m)
{
	return rte_pktmbuf_lastseg(m);
}

unsigned int chc_rte_ring_enqueue_burst(struct rte_ring *r, void *const *obj_table, unsigned int n,
                                        unsigned int *free_space)
{
	return rte_ring_enqueue_burst(r, obj_table, n, free_space);
}

unsigned int chc_rte_ring_dequeue_burst(struct rte_ring *r, void **obj_table, unsigned int n,
                                        unsigned int *available)
{
	return rte_ring_dequeue_burst(r, obj_table, n, available);
}

unsigned int chc_rte_ring_count(const struct rte_ring *r)
{
	return rte_ring_count(r);
}

unsigned int chc_rte_ring_free_count(const struct rte_ring *r)
{
	return rte_ring_free_count(r);
}

unsigned int chc_rte_ring_get_capacity(const struct rte_ring *r)
{
	return rte_ring_get_capacity(r);
}

int chc_rte_errno(void)
{
	return rte_errno;
}

void chc_rte_errno_set(int value)
{
	rte_errno = value;
}

unsigned int chc_rte_lcore_id(void)
{
	return rte_lcore_id();
}

int chc_rte_thread_keep_off_lcores(pthread_t t)
{
	rte_cpuset_t set;
	unsigned int lcore;
	int cpu, err;

	err = pthread_getaffinity_np(t, sizeof(set), &set);
	if (err != 0)
		return -err;
	RTE_LCORE_FOREACH(lcore) {
		rte_cpuset_t used = rte_lcore_cpuset(lcore);

		for (cpu = 0; cpu < CPU_SETSIZE; cpu++)
			if (CPU_ISSET(cpu, &used))
				CPU_CLR(cpu, &set);
	}
	if (CPU_COUNT(&set) == 0)
		return 0;
	err = pthread_setaffinity_np(t, sizeof(set), &set);
	return err == 0 ? 1 : -err;
}

uint64_t chc_rte_rdtsc(void)
{
	return rte_rdtsc();
}

void chc_rte_pause(void)
{
	rte_pause();
}

uint64_t chc_rte_eth_rss_ip(void)
{
	return RTE_ETH_RSS_IP;
}

uint64_t chc_rte_eth_rss_tcp(void)
{
	return RTE_ETH_RSS_TCP;
}

uint64_t chc_rte_eth_rss_udp(void)
{
	return RTE_ETH_RSS_UDP;
}

uint64_t chc_rte_eth_rx_offload_rss_hash(void)
{
	return RTE_ETH_RX_OFFLOAD_RSS_HASH;
}

uint64_t chc_rte_eth_rx_offload_timestamp(void)
{
	return RTE_ETH_RX_OFFLOAD_TIMESTAMP;
}
