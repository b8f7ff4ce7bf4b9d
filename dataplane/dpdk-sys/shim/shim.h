/*
 * Exported wrappers around DPDK's `static inline` functions and function-like macros, which
 * have no symbol in the shared libraries and so cannot be called through bindgen's externs.
 * Every wrapper keeps DPDK's name with a `chc_` prefix and DPDK's exact semantics.
 */
#ifndef CHC_DPDK_SHIM_H
#define CHC_DPDK_SHIM_H

#include <pthread.h>

#include <rte_config.h>
#include <rte_common.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_memory.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_bus_vdev.h>
#include <rte_eth_ring.h>
#include <rte_thread.h>
#include <rte_version.h>

/* ethdev fast path */
uint16_t chc_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                              uint16_t nb_pkts);
uint16_t chc_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                              uint16_t nb_pkts);

/* mbufs */
struct rte_mbuf *chc_rte_pktmbuf_alloc(struct rte_mempool *mp);
int chc_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int count);
void chc_rte_pktmbuf_free(struct rte_mbuf *m);
char *chc_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *chc_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *chc_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int chc_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t chc_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t chc_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
void *chc_rte_pktmbuf_mtod(const struct rte_mbuf *m);
uint32_t chc_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t chc_rte_pktmbuf_data_len(const struct rte_mbuf *m);
int chc_rte_pktmbuf_is_contiguous(const struct rte_mbuf *m);
int chc_rte_pktmbuf_linearize(struct rte_mbuf *m);
const void *chc_rte_pktmbuf_read(const struct rte_mbuf *m, uint32_t off, uint32_t len, void *buf);
void chc_rte_pktmbuf_reset(struct rte_mbuf *m);
struct rte_mbuf *chc_rte_pktmbuf_lastseg(struct rte_mbuf *m);

/* rings (burst variants dispatch on the ring's SP/MP and SC/MC flags) */
unsigned int chc_rte_ring_enqueue_burst(struct rte_ring *r, void *const *obj_table, unsigned int n,
                                        unsigned int *free_space);
unsigned int chc_rte_ring_dequeue_burst(struct rte_ring *r, void **obj_table, unsigned int n,
                                        unsigned int *available);
unsigned int chc_rte_ring_count(const struct rte_ring *r);
unsigned int chc_rte_ring_free_count(const struct rte_ring *r);
unsigned int chc_rte_ring_get_capacity(const struct rte_ring *r);

/* EAL */
int chc_rte_errno(void);
void chc_rte_errno_set(int value);
unsigned int chc_rte_lcore_id(void);
uint64_t chc_rte_rdtsc(void);
void chc_rte_pause(void);
/* Not a wrapper: takes the CPUs of every enabled lcore out of thread `t`'s affinity, as DPDK
 * does for its own control threads. Returns 1 when the affinity changed, 0 when no other CPU
 * is left (the thread keeps its affinity), a negative errno on failure. */
int chc_rte_thread_keep_off_lcores(pthread_t t);

/* RSS hash-function sets, which DPDK defines as macros built from RTE_BIT64() */
uint64_t chc_rte_eth_rss_ip(void);
uint64_t chc_rte_eth_rss_tcp(void);
uint64_t chc_rte_eth_rss_udp(void);
/* the Rx offload flag that makes a PMD store its RSS hash in the mbuf */
uint64_t chc_rte_eth_rx_offload_rss_hash(void);
/* the Rx offload flag that makes a PMD timestamp received packets (a dynamic mbuf field) */
uint64_t chc_rte_eth_rx_offload_timestamp(void);

#endif
