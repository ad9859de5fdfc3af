// The parts of librabbitmq (rabbitmq-c 0.11) that Swift cannot call directly.
#ifndef COURIER_CRABBITMQ_H
#define COURIER_CRABBITMQ_H

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <poll.h>
#include <sys/eventfd.h>

/// An eventfd that wakes a connection thread waiting in poll(2).
static inline int courier_wake_fd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

/// `amqp_login` with the PLAIN mechanism: the original is variadic, which Swift cannot call.
amqp_rpc_reply_t courier_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                          int channel_max, int frame_max, int heartbeat,
                                          const char *user, const char *password);

#endif
