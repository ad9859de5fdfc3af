// Baseline: raw librabbitmq (rabbitmq-c 0.11) doing what `courier bench --phases` does through
// RabbitMQTransport: publish N persistent messages to a durable queue with pipelined publisher
// confirms, then consume them with manual acks (one ack per message, like Delivery.ack()).
// Usage: raw_rabbitmq HOST PORT QUEUE COUNT SIZE WINDOW PREFETCH
// Prints: publish_msgs_per_s consume_msgs_per_s publish_cpu_us_per_msg consume_cpu_us_per_msg
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, amqp_rpc_reply_t reply) {
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "raw_rabbitmq: %s failed (%d)\n", what, reply.reply_type);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: raw_rabbitmq HOST PORT QUEUE COUNT SIZE WINDOW PREFETCH\n");
    return 2;
  }
  const char *host = argv[1], *queue = argv[3];
  int port = atoi(argv[2]);
  long count = atol(argv[4]);
  int size = atoi(argv[5]), window = atoi(argv[6]), prefetch = atoi(argv[7]);

  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t *socket = amqp_tcp_socket_new(conn);
  if (amqp_socket_open(socket, host, port) != AMQP_STATUS_OK) { fprintf(stderr, "cannot connect\n"); return 1; }
  die("login", amqp_login(conn, "/", 0, 131072, 30, AMQP_SASL_METHOD_PLAIN, "guest", "guest"));
  amqp_channel_open(conn, 1);
  die("channel", amqp_get_rpc_reply(conn));
  amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
  die("declare", amqp_get_rpc_reply(conn));
  amqp_confirm_select(conn, 1);
  die("confirm", amqp_get_rpc_reply(conn));

  char *body = malloc(size);
  memset(body, 'a', size);
  amqp_basic_properties_t props;
  props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.delivery_mode = 2;
  // With COURIER_LIKE=1, each message also carries what a Courier transport message carries:
  // the CloudEvents headers ce_id, ce_time, ce_specversion and the message_id/timestamp
  // properties. COURIER_LIKE=2 is a bus message as headers: also ce_type, content-type,
  // ce_source and ce_correlationid (7 headers). COURIER_LIKE=3 is the same message with the
  // well-known attributes as basic properties (message_id, timestamp, type, content_type,
  // app_id, correlation_id) and only ce_time (milliseconds) left in the headers table.
  amqp_table_entry_t entries[7];
  char id[37] = "00000000-0000-4000-8000-000000000000";
  int courier_like = getenv("COURIER_LIKE") ? atoi(getenv("COURIER_LIKE")) : 0;
  const char *names[7] = {"ce_id", "ce_time", "ce_specversion", "ce_type", "content-type", "ce_source", "ce_correlationid"};
  const char *values[7] = {id, "2026-11-22T01:45:39.123Z", "1.0", "BenchCommand.v1", "application/json", "/bench", id};
  if (courier_like) {
    int first = courier_like == 3 ? 1 : 0, count = courier_like == 1 ? 3 : courier_like == 2 ? 7 : 1;
    for (int i = 0; i < count; i++) {
      entries[i].key = amqp_cstring_bytes(names[first + i]);
      entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
      entries[i].value.value.bytes = amqp_cstring_bytes(values[first + i]);
    }
    props._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    props.headers.num_entries = count;
    props.headers.entries = entries;
    props.message_id = amqp_cstring_bytes(id);
    props.timestamp = 1795306877;
    if (courier_like == 3) {
      props._flags |= AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
      props.type = amqp_cstring_bytes("BenchCommand.v1");
      props.content_type = amqp_cstring_bytes("application/json");
      props.app_id = amqp_cstring_bytes("/bench");
      props.correlation_id = amqp_cstring_bytes(id);
    }
  }

  double t0 = now(), c0 = cpu();
  long published = 0, confirmed = 0;
  while (confirmed < count) {
    while (published < count && published - confirmed < window) {
      if (courier_like) snprintf(id + 24, 13, "%012ld", published);
      if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 0, 0, &props,
                             (amqp_bytes_t){.len = size, .bytes = body}) != AMQP_STATUS_OK) {
        fprintf(stderr, "publish failed\n");
        return 1;
      }
      published++;
    }
    amqp_frame_t frame;
    if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) { fprintf(stderr, "wait failed\n"); return 1; }
    if (frame.frame_type == AMQP_FRAME_METHOD && frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
      amqp_basic_ack_t *ack = frame.payload.method.decoded;
      confirmed = ack->multiple ? (long)ack->delivery_tag : confirmed + 1;
    }
    amqp_maybe_release_buffers(conn);
  }
  double publish_time = now() - t0, publish_cpu = cpu() - c0;

  amqp_basic_qos(conn, 1, 0, prefetch, 0);
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  die("consume", amqp_get_rpc_reply(conn));
  t0 = now();
  c0 = cpu();
  for (long received = 0; received < count; received++) {
    amqp_envelope_t envelope;
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t reply = amqp_consume_message(conn, &envelope, NULL, 0);
    die("consume_message", reply);
    amqp_basic_ack(conn, 1, envelope.delivery_tag, 0);
    amqp_destroy_envelope(&envelope);
  }
  double consume_time = now() - t0, consume_cpu = cpu() - c0;
  printf("%.0f %.0f %.2f %.2f\n", count / publish_time, count / consume_time, publish_cpu / count * 1e6,
         consume_cpu / count * 1e6);
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
  return 0;
}
