#ifndef COURIER_CRDKAFKA_SHIM_H
#define COURIER_CRDKAFKA_SHIM_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* Swift cannot call librdkafka's variadic producev: one produce call for Courier's needs.
 * On success librdkafka owns `headers`; on failure the caller still does. The payload and
 * key are copied. */
static inline rd_kafka_resp_err_t courier_rdk_produce(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int32_t partition,
                                                      const void *payload, size_t len,
                                                      const void *key, size_t keylen,
                                                      rd_kafka_headers_t *headers, void *opaque) {
    return rd_kafka_producev(rk,
                             RD_KAFKA_V_RKT(rkt),
                             RD_KAFKA_V_PARTITION(partition),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_VALUE((void *)payload, len),
                             RD_KAFKA_V_KEY(key, keylen),
                             RD_KAFKA_V_HEADERS(headers),
                             RD_KAFKA_V_OPAQUE(opaque),
                             RD_KAFKA_V_END);
}

/* The partition-unassigned constant, which Swift does not import (it is a cast macro). */
static inline int32_t courier_rdk_partition_ua(void) { return RD_KAFKA_PARTITION_UA; }
static inline int64_t courier_rdk_offset_invalid(void) { return RD_KAFKA_OFFSET_INVALID; }
static inline int64_t courier_rdk_offset_beginning(void) { return RD_KAFKA_OFFSET_BEGINNING; }
static inline int64_t courier_rdk_offset_end(void) { return RD_KAFKA_OFFSET_END; }

#endif
