/* The raw librdkafka baseline for scripts/bench-kafka, and the mock cluster it runs on.
 *
 *   raw_kafka mock BROKERS TOPIC:PARTITIONS...
 *       starts librdkafka's mock cluster, creates the topics, prints its bootstrap servers
 *       and serves until standard input closes.
 *   raw_kafka bench BOOTSTRAP TOPIC COUNT SIZE
 *       produces COUNT messages of SIZE bytes (idempotent, acks=all, waiting for every
 *       delivery report), then consumes them through a new consumer group, storing each
 *       message's offset (the "ack") and committing every 200 ms. Prints
 *       "produce/s consume/s produce-µs-CPU/msg consume-µs-CPU/msg". Consume time runs from
 *       the first message (the group join is not counted), as in courier bench --phases.
 *       With COURIER_LIKE=1 each message carries the headers a Courier message carries; with
 *       COURIER_READ=1 as well the consumer reads every header and copies each payload, as a
 *       consumer that hands messages on (Courier's envelope) must.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double cpu(void) {
    struct rusage u; getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}
static void set(rd_kafka_conf_t *c, const char *k, const char *v) {
    char e[512];
    if (rd_kafka_conf_set(c, k, v, e, sizeof e) != RD_KAFKA_CONF_OK) { fprintf(stderr, "%s: %s\n", k, e); exit(2); }
}
static long delivered, failed;
static void dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk; (void)opaque;
    if (m->err) failed++; else delivered++;
}

static int mock(int brokers, int argc, char **argv) {
    char e[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "log_level", "2");
    rd_kafka_t *host = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e);
    rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, brokers);
    for (int i = 0; i < argc; i++) {
        char *colon = strrchr(argv[i], ':');
        if (!colon) { fprintf(stderr, "topic %s: write NAME:PARTITIONS\n", argv[i]); return 2; }
        *colon = 0;
        rd_kafka_mock_topic_create(cluster, argv[i], atoi(colon + 1), 1);
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(cluster));
    fflush(stdout);
    char buffer[64];
    while (read(0, buffer, sizeof buffer) > 0) {}
    rd_kafka_mock_cluster_destroy(cluster);
    rd_kafka_destroy(host);
    return 0;
}

static int bench(const char *bootstrap, const char *topic, long count, int size) {
    char e[512];
    int like = getenv("COURIER_LIKE") && *getenv("COURIER_LIKE");
    char *payload = malloc(size);
    memset(payload, 'a', size);

    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "bootstrap.servers", bootstrap);
    set(c, "enable.idempotence", "true");
    set(c, "acks", "all");
    set(c, "linger.ms", "5");
    /* Spread keyless messages evenly: the mock keeps only ~5 MiB per partition. */
    set(c, "sticky.partitioning.linger.ms", "0");
    set(c, "log_level", "2");
    rd_kafka_conf_set_dr_msg_cb(c, dr);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, c, e, sizeof e);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p, topic, NULL);
    double t0 = now(), c0 = cpu();
    for (long i = 0; i < count; i++) {
        rd_kafka_headers_t *h = NULL;
        if (like) {
            char id[64];
            snprintf(id, sizeof id, "%08lx-0000-4000-8000-%012lx", (unsigned long)i, (unsigned long)i);
            h = rd_kafka_headers_new(8);
            rd_kafka_header_add(h, "ce_id", -1, id, -1);
            rd_kafka_header_add(h, "ce_time", -1, "2026-11-22T02:00:00.000Z", -1);
            rd_kafka_header_add(h, "ce_specversion", -1, "1.0", -1);
        }
        for (;;) {
            rd_kafka_resp_err_t err = rd_kafka_producev(p, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_VALUE(payload, (size_t)size),
                                                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                                        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) { rd_kafka_poll(p, 1); continue; }
            if (err) { fprintf(stderr, "produce: %s\n", rd_kafka_err2str(err)); return 1; }
            break;
        }
        rd_kafka_poll(p, 0);
    }
    while (delivered + failed < count) rd_kafka_poll(p, 10);
    double produceSeconds = now() - t0, produceCPU = cpu() - c0;
    if (getenv("RAW_KAFKA_VERBOSE")) fprintf(stderr, "produced %ld in %.2f s\n", count, produceSeconds);
    if (failed) { fprintf(stderr, "%ld messages failed\n", failed); return 1; }
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(p);

    char group[64];
    snprintf(group, sizeof group, "raw-bench-%d", getpid());
    c = rd_kafka_conf_new();
    set(c, "bootstrap.servers", bootstrap);
    set(c, "group.id", group);
    set(c, "auto.offset.reset", "earliest");
    set(c, "enable.auto.commit", "true");
    set(c, "auto.commit.interval.ms", "200");
    set(c, "enable.auto.offset.store", "false");
    set(c, "log_level", "2");
    rd_kafka_t *k = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
    rd_kafka_poll_set_consumer(k);
    rd_kafka_topic_partition_list_t *subscription = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subscription, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(k, subscription);
    rd_kafka_queue_t *queue = rd_kafka_queue_get_consumer(k);
    rd_kafka_message_t *batch[1024];
    int read = getenv("COURIER_READ") && *getenv("COURIER_READ");
    volatile size_t sink = 0;
    long received = 0;
    double start = 0, cpuStart = 0;
    double lastProgress = now();
    while (received < count) {
        if (getenv("RAW_KAFKA_VERBOSE") && now() - lastProgress > 1) { fprintf(stderr, "received %ld\n", received); lastProgress = now(); }
        ssize_t n = rd_kafka_consume_batch_queue(queue, 100, batch, 1024);
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = batch[i];
            if (!m->err) {
                if (received == 0) { start = now(); cpuStart = cpu(); }
                if (read) {
                    /* What a consumer of Courier's messages does at least: read the headers
                       (librdkafka parses them on first access) and keep the payload. */
                    rd_kafka_headers_t *h = NULL;
                    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                        const char *name; const void *value; size_t size;
                        for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
                            sink += size + (unsigned char)name[0];
                    }
                    void *copy = malloc(m->len);
                    memcpy(copy, m->payload, m->len);
                    sink += ((unsigned char *)copy)[0];
                    free(copy);
                }
                rd_kafka_offset_store(m->rkt, m->partition, m->offset);
                received++;
            }
            rd_kafka_message_destroy(m);
        }
    }
    double consumeSeconds = now() - start, consumeCPU = cpu() - cpuStart;
    rd_kafka_queue_destroy(queue);
    rd_kafka_consumer_close(k);
    rd_kafka_destroy(k);
    printf("%ld %ld %.2f %.2f\n", (long)(count / produceSeconds), (long)(count / consumeSeconds),
           produceCPU / count * 1e6, consumeCPU / count * 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "mock") == 0) return mock(atoi(argv[2]), argc - 3, argv + 3);
    if (argc == 6 && strcmp(argv[1], "bench") == 0) return bench(argv[2], argv[3], atol(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: raw_kafka mock BROKERS TOPIC:PARTITIONS... | raw_kafka bench BOOTSTRAP TOPIC COUNT SIZE\n");
    return 2;
}
