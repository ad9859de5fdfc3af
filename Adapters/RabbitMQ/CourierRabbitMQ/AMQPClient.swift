import CRabbitMQ
import Courier

#if canImport(Glibc)
    import Glibc
#endif

/// Every librabbitmq call the adapter makes, as thin methods on one connection handle: the
/// adapter's translation table from AMQP to C. Nothing here keeps state or decides anything;
/// ``AMQPConnection`` (with ``AMQPConnectionStateMachine``) does. Not thread-safe, as
/// librabbitmq: used only on the connection's thread.
struct AMQPClient: @unchecked Sendable {
    let raw: amqp_connection_state_t

    // MARK: Connecting

    /// Opens a connection (TCP or TLS) to `node`, one of the settings' hosts, within
    /// `timeoutSeconds`, logs in and returns it; a typed error says what failed.
    static func connect(_ settings: AMQPSettings, node: AMQPSettings.Endpoint, timeoutSeconds: Int) throws(CourierError) -> AMQPClient {
        guard let state = amqp_new_connection() else { throw CourierError(.unreachable, "librabbitmq could not allocate a connection") }
        var ok = false
        defer { if !ok { amqp_destroy_connection(state) } }
        let socket: OpaquePointer?
        if let tls = settings.tls {
            socket = amqp_ssl_socket_new(state)
            guard let socket else { throw CourierError(.unreachable, "librabbitmq could not create a TLS socket") }
            if let ca = tls.caCertificateFile, amqp_ssl_socket_set_cacert(socket, ca) != AMQP_STATUS_OK.rawValue {
                throw CourierError(.invalidConfiguration, "could not read the CA certificate file \(ca); check the cacertfile option")
            }
            if let certificate = tls.certificateFile, let key = tls.keyFile,
                amqp_ssl_socket_set_key(socket, certificate, key) != AMQP_STATUS_OK.rawValue
            {
                throw CourierError(
                    .invalidConfiguration, "could not read the client certificate \(certificate) or key \(key); check certfile and keyfile")
            }
            amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verifyPeer ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(state)
        }
        guard let socket else { throw CourierError(.unreachable, "librabbitmq could not create a socket") }
        let connectionTimeout = min(max(1, timeoutSeconds), 86_400)
        var timeout = timeval(tv_sec: connectionTimeout, tv_usec: 0)
        let opened = amqp_socket_open_noblock(socket, node.host, Int32(clamping: node.port), &timeout)
        // No RPC may block the thread forever (a broker that accepts TCP but never answers).
        var rpcTimeout = timeval(tv_sec: max(30, connectionTimeout * 3), tv_usec: 0)
        _ = amqp_set_rpc_timeout(state, &rpcTimeout)
        var handshakeTimeout = timeval(tv_sec: connectionTimeout, tv_usec: 0)
        _ = amqp_set_handshake_timeout(state, &handshakeTimeout)
        guard opened == AMQP_STATUS_OK.rawValue else {
            throw CourierError(
                .unreachable,
                "cannot reach RabbitMQ at \(node) (\(errorText(opened))); check that the broker runs and the URL \(settings) is right",
                isRetriable: true
            )
        }
        let login = courier_amqp_login_plain(
            state, settings.virtualHost, 0, Int32(clamping: settings.frameMax),
            Int32(clamping: min(max(0, settings.heartbeatSeconds), 65_535)), settings.username, settings.password.revealed
        )
        guard login.reply_type == AMQP_RESPONSE_NORMAL else {
            throw loginError(login, settings: settings, node: node)
        }
        ok = true
        return AMQPClient(raw: state)
    }

    /// Sends `connection.close` and waits for its reply.
    func close() { _ = amqp_connection_close(raw, AMQP_REPLY_SUCCESS) }

    /// Frees the connection (and closes its socket).
    func destroy() { amqp_destroy_connection(raw) }

    /// An eventfd that wakes the connection's `poll(2)` (the C shim's).
    static func makeWakeFD() -> Int32 { courier_wake_fd() }

    // MARK: Reading

    /// The socket, for `poll(2)`.
    var socket: Int32 { amqp_get_sockfd(raw) }

    /// Whether librabbitmq holds frames or bytes not yet handed out.
    var hasBufferedInput: Bool { amqp_frames_enqueued(raw) != 0 || amqp_data_in_buffer(raw) != 0 }

    /// The next frame if one can be read without blocking: librabbitmq's status.
    func nextFrame(_ frame: inout amqp_frame_t) -> Int32 {
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        return amqp_simple_wait_frame_noblock(raw, &frame, &zero)
    }

    /// Lets librabbitmq recycle the buffers of `channel`'s decoded frames.
    func releaseBuffers(channel: UInt16) { amqp_maybe_release_buffers_on_channel(raw, channel) }

    /// The reply of the last RPC.
    var reply: amqp_rpc_reply_t { amqp_get_rpc_reply(raw) }

    // MARK: Channels

    /// The highest channel number the broker allows (0: no limit).
    var channelMax: Int { Int(amqp_get_channel_max(raw)) }

    func openChannel(_ channel: UInt16) -> amqp_rpc_reply_t {
        _ = amqp_channel_open(raw, channel)
        return reply
    }

    func closeChannel(_ channel: UInt16) -> amqp_rpc_reply_t {
        amqp_channel_close(raw, channel, AMQP_REPLY_SUCCESS)
    }

    /// Puts `channel` in publisher-confirm mode.
    func confirmSelect(_ channel: UInt16) -> amqp_rpc_reply_t {
        _ = amqp_confirm_select(raw, channel)
        return reply
    }

    /// Answers the broker's `channel.close`.
    func channelCloseOK(_ channel: UInt16) {
        var ok = amqp_channel_close_ok_t(dummy: 0)
        _ = amqp_send_method(raw, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
    }

    /// Answers the broker's `connection.close`.
    func connectionCloseOK() {
        var ok = amqp_connection_close_ok_t(dummy: 0)
        _ = amqp_send_method(raw, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
    }

    /// Answers the broker's `basic.cancel` of `consumerTag`.
    func cancelOK(_ channel: UInt16, consumerTag: amqp_bytes_t) {
        var ok = amqp_basic_cancel_ok_t(consumer_tag: consumerTag)
        _ = amqp_send_method(raw, channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok)
    }

    // MARK: Topology

    func exchangeDeclare(_ channel: UInt16, name: String, type: String) -> amqp_rpc_reply_t {
        AMQPCodec.withBytes(name) { exchange in
            AMQPCodec.withBytes(type) { type in
                _ = amqp_exchange_declare(raw, channel, exchange, type, 0, 1, 0, 0, amqp_empty_table)
            }
        }
        return reply
    }

    /// Declares a durable queue with `arguments`.
    func queueDeclare(_ channel: UInt16, name: String, arguments: [(String, AMQPCodec.Argument)]) -> amqp_rpc_reply_t {
        AMQPCodec.withTable(arguments) { table in
            AMQPCodec.withBytes(name) { queue in
                _ = amqp_queue_declare(raw, channel, queue, 0, 1, 0, 0, table)
            }
        }
        return reply
    }

    func queueBind(_ channel: UInt16, queue: String, exchange: String) -> amqp_rpc_reply_t {
        AMQPCodec.withBytes(queue) { queue in
            AMQPCodec.withBytes(exchange) { exchange in
                _ = amqp_queue_bind(raw, channel, queue, exchange, amqp_empty_bytes, amqp_empty_table)
            }
        }
        return reply
    }

    // MARK: Publishing and consuming

    /// Sends `basic.publish`: librabbitmq's status.
    func publish(
        _ channel: UInt16, exchange: amqp_bytes_t, routingKey: amqp_bytes_t, properties: inout amqp_basic_properties_t, body: amqp_bytes_t
    ) -> Int32 {
        amqp_basic_publish(raw, channel, exchange, routingKey, 0, 0, &properties, body)
    }

    /// Sets the channel's prefetch (`basic.qos`).
    func qos(_ channel: UInt16, prefetch: Int) -> amqp_rpc_reply_t {
        _ = amqp_basic_qos(raw, channel, 0, UInt16(clamping: prefetch), 0)
        return reply
    }

    /// Starts consuming `queue` on `channel` with manual acks.
    func consume(_ channel: UInt16, queue: String) -> amqp_rpc_reply_t {
        AMQPCodec.withBytes(queue) { queue in
            _ = amqp_basic_consume(raw, channel, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
        }
        return reply
    }

    /// Acks `tag` (and every earlier one when `multiple`); `false` when the socket failed.
    func ack(_ channel: UInt16, tag: UInt64, multiple: Bool) -> Bool {
        amqp_basic_ack(raw, channel, tag, multiple ? 1 : 0) == AMQP_STATUS_OK.rawValue
    }

    // MARK: Errors

    /// librabbitmq's text for a status code.
    static func errorText(_ status: Int32) -> String { String(cString: amqp_error_string2(status)) }

    /// What a failed login means. Only the broker's own refusal (`connection.close` 403
    /// ACCESS_REFUSED, which RabbitMQ sends because librabbitmq announces
    /// `authentication_failure_close`) is an authentication failure; an unknown virtual host or
    /// missing permission on it (530 NOT_ALLOWED) is a configuration error; a socket closed or
    /// timed out before the broker's reply is a connection failure worth retrying (a broker
    /// starting or stopping, a proxy, or a server that is not RabbitMQ).
    static func loginError(_ login: amqp_rpc_reply_t, settings: AMQPSettings, node: AMQPSettings.Endpoint) -> CourierError {
        let detail = describe(login)
        let server = "RabbitMQ at \(node)"
        if login.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, login.reply.id == AMQP_CONNECTION_CLOSE_METHOD {
            let code = login.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee.reply_code
            switch Int32(code) {
            case AMQP_ACCESS_REFUSED:
                return CourierError(
                    .authenticationFailed,
                    "\(server) refused user '\(settings.username)' (\(detail)); check the user name and password"
                )
            case AMQP_NOT_ALLOWED:
                return CourierError(
                    .invalidConfiguration,
                    "\(server) does not let user '\(settings.username)' use virtual host '\(settings.virtualHost)' (\(detail)); create it (rabbitmqctl add_vhost) and grant permissions (rabbitmqctl set_permissions), or fix the URL's path"
                )
            default:
                break
            }
        }
        return CourierError(
            .unreachable,
            "\(server) closed or dropped the connection before answering the login (\(detail)); check that the broker has started and that this is its AMQP port, not another server's",
            isRetriable: true
        )
    }

    static func describe(_ reply: amqp_rpc_reply_t) -> String {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return "ok"
        case AMQP_RESPONSE_NONE:
            return "no reply"
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return errorText(reply.library_error)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return "\(close.reply_code) \(AMQPCodec.string(close.reply_text))"
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return "\(close.reply_code) \(AMQPCodec.string(close.reply_text))"
            default:
                return "server method \(reply.reply.id)"
            }
        default:
            return "unknown reply"
        }
    }
}
