/// A transport chosen by URL, parsed into typed settings.
///
/// ```
/// memory://                       a private in-process broker
/// memory://orders?capacity=1000   the process-wide in-process broker "orders"
/// amqp://user:pass@host:5672/vhost?heartbeat=30&prefetch=256&queue_type=quorum
/// amqps://user:pass@host/vhost?cacertfile=/etc/ca.pem&verify=verify_peer
/// kafka://host1:9092,host2:9092?client_id=shop&partitions=6&rdkafka.linger.ms=5
/// ```
///
/// Parse errors are ``CourierError/Code/invalidURL`` and name the bad part. Neither errors nor
/// ``description`` ever contain the password.
public enum TransportURL: Sendable, Hashable, CustomStringConvertible {
    case memory(MemorySettings)
    case amqp(AMQPSettings)
    case kafka(KafkaSettings)

    /// Parses `string`, throwing ``CourierError/Code/invalidURL`` with the bad part named.
    public init(_ string: String) throws(CourierError) {
        var parser = URLParser(string)
        self = try parser.parse()
    }

    /// The URL scheme: `memory`, `amqp`, `amqps` or `kafka`.
    public var scheme: String {
        switch self {
        case .memory: "memory"
        case .amqp(let settings): settings.tls == nil ? "amqp" : "amqps"
        case .kafka: "kafka"
        }
    }

    /// The URL with the password replaced by `******`.
    public var description: String {
        switch self {
        case .memory(let settings): settings.description
        case .amqp(let settings): settings.description
        case .kafka(let settings): settings.description
        }
    }

    /// `string` with any password replaced by `******`, for messages about URLs that may not
    /// even parse.
    ///
    /// Everything between the scheme and the string's *last* `@` counts as user info, so a
    /// password holding a raw `/`, `?`, `#` or `@` is hidden too, as are the forms
    /// `amqp:user:pw@host` and `amqp:/user:pw@host`. A plain user name (`user:` with no reserved
    /// character) stays visible; anything less clear is replaced whole. This may hide more than
    /// the password (an `@` in a query value), never less.
    public static func redacted(_ string: String) -> String {
        guard let at = string.lastIndex(of: "@") else { return string }
        let hidden = "******" + string[at...]
        // Where the user info starts: after `scheme://`, else after `scheme:` and its slashes.
        let start: String.Index
        if let separator = string.range(of: "://"), separator.upperBound <= at {
            start = separator.upperBound
            let info = string[start..<at]
            let colon = info.firstIndex(of: ":")
            if !info[..<(colon ?? info.endIndex)].contains(where: { "/?#".contains($0) }) {
                // A plain user name stays visible; user info without a password holds no secret.
                guard let colon else { return string }
                return String(string[...colon]) + hidden
            }
        } else if let colon = string.firstIndex(of: ":"), colon < at {
            start = string[string.index(after: colon)..<at].firstIndex { $0 != "/" } ?? at
        } else {
            start = string.startIndex
        }
        return String(string[..<start]) + hidden
    }
}

/// `memory://[NAME][?options]`: an in-process broker, private or shared by name.
///
/// Options: `capacity` (messages per queue, default 100000), `capacity_bytes` (payload bytes
/// per queue, default 67108864 = 64 MiB), `overflow` (`backpressure` or `reject`, at either
/// bound), `retention` (events per topic kept for replay, default 10000), `retention_bytes`
/// (payload bytes per topic kept for replay, default 64 MiB),
/// `max_payload` (bytes, default 1048576), `ordered` (`true` or `false`).
public struct MemorySettings: Sendable, Hashable, CustomStringConvertible {
    /// The shared broker's name; `nil` for a private broker.
    public var brokerName: String?
    /// The broker's limits.
    public var configuration: InMemoryBroker.Configuration

    /// Creates settings for a private broker with default limits.
    public init(brokerName: String? = nil, configuration: InMemoryBroker.Configuration = .init()) {
        self.brokerName = brokerName
        self.configuration = configuration
    }

    /// A transport connected to the broker these settings name.
    public func makeTransport() throws(CourierError) -> InMemoryTransport {
        if let brokerName {
            return InMemoryTransport(broker: try InMemoryBroker.named(brokerName, configuration: configuration))
        }
        return try InMemoryTransport(configuration: configuration)
    }

    public var description: String { "memory://\(brokerName ?? "")" }
}

/// TLS settings for `amqps://` (and Kafka's `ssl`).
public struct TLSSettings: Sendable, Hashable {
    /// PEM file of the certificate authorities to trust; the system's when `nil`.
    public var caCertificateFile: String?
    /// PEM client certificate, for mutual TLS.
    public var certificateFile: String?
    /// PEM private key of the client certificate.
    public var keyFile: String?
    /// Whether to verify the broker's certificate and host name. Default true.
    public var verifyPeer: Bool = true

    /// Peer verification on, system trust store.
    public init() {}
}

/// `amqp://` and `amqps://` URLs: a RabbitMQ node, or the nodes of a cluster.
///
/// Defaults follow the RabbitMQ URI specification: host `localhost`, port 5672 (5671 for
/// `amqps`), user and password `guest`, virtual host `/` (write another vhost percent-encoded
/// as the path: `/%2Fshop` is `/shop`). A cluster's nodes are listed with commas,
/// `amqp://user:pass@h1:5672,h2:5673,h3/vhost` (a port left out is the scheme's default): the
/// transport connects to one and, when it cannot reach it or loses it, to the next (see
/// ``hosts`` and ``hostOrder``). Options: `host_order` (`in_order` or `shuffle`), `heartbeat` (seconds, default 30; 0 turns
/// heartbeats off), `connection_timeout` (seconds, default 10), `prefetch` (default 256),
/// `queue_type` (`classic` or `quorum`), `frame_max` (bytes, default 131072), `attributes`
/// (`properties` or `headers`, see ``AttributeMapping``), and for TLS `cacertfile`, `certfile`,
/// `keyfile`, `verify` (`verify_peer` or `verify_none`).
public struct AMQPSettings: Sendable, Hashable, CustomStringConvertible {
    /// Which RabbitMQ queue type Courier declares.
    public enum QueueType: String, Sendable, Hashable {
        case classic, quorum
    }

    /// How a published message carries the well-known attributes that AMQP 0-9-1 has basic
    /// properties for. Reading accepts both forms either way.
    public enum AttributeMapping: String, Sendable, Hashable {
        /// The default: `message_id` (``CourierHeader/id``), `type` (``CourierHeader/type``),
        /// `content_type` (``CourierHeader/contentType``), `app_id` (``CourierHeader/source``),
        /// `correlation_id` (``CourierHeader/correlationID``) and `timestamp` (seconds) are
        /// basic properties, which every AMQP client reads (pika's `properties.message_id`);
        /// the headers table keeps `ce_time` (milliseconds) and what has no property.
        /// `ce_specversion` is not sent (it is always 1.0). A value longer than a property
        /// holds (255 bytes) stays a header. The broker parses a smaller table: measured here,
        /// RabbitMQ confirms a third more persistent messages per second.
        case properties
        /// Every attribute as a CloudEvents header in the headers table as well (the
        /// `message_id`, `timestamp` and `content_type` properties are still set): for
        /// consumers that read only headers.
        case headers
    }

    /// A node's address.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int = 5672) {
            self.host = host
            self.port = port
        }
        public var description: String { "\(URLParser.format(host: host)):\(port)" }
    }

    /// In which order the transport tries ``hosts``.
    public enum HostOrder: String, Sendable, Hashable {
        /// First to last, as listed (URL option `host_order=in_order`, the default): every
        /// service prefers the first node while it is up.
        case inOrder = "in_order"
        /// A random order per process (`host_order=shuffle`): services spread their
        /// connections over the nodes.
        case shuffle
    }

    /// The nodes to connect to, at least one. The transport connects to the first it can reach
    /// in ``hostOrder``; on losing that connection it tries the next node after it (then the
    /// rest, round the list), with exponential backoff after each full round, and re-declares
    /// its topology, resumes its consumers and republishes what was not confirmed.
    public var hosts: [Endpoint] = [Endpoint(host: "localhost")]
    public var hostOrder: HostOrder = .inOrder

    /// The first node's host name or address.
    public var host: String {
        get { hosts.first?.host ?? "localhost" }
        set {
            if hosts.isEmpty { hosts = [Endpoint(host: newValue)] } else { hosts[0].host = newValue }
        }
    }
    /// The first node's port.
    public var port: Int {
        get { hosts.first?.port ?? 5672 }
        set {
            if hosts.isEmpty { hosts = [Endpoint(host: "localhost", port: newValue)] } else { hosts[0].port = newValue }
        }
    }
    public var username: String = "guest"
    public var password: Secret = "guest"
    public var virtualHost: String = "/"
    /// Heartbeat interval in seconds; 0 turns heartbeats off.
    public var heartbeatSeconds: Int = 30
    /// How long connecting may take, in seconds.
    public var connectionTimeoutSeconds: Int = 10
    /// Un-acked deliveries per consumer (`basic.qos`).
    public var prefetch: Int = 256
    public var queueType: QueueType = .classic
    public var frameMax: Int = 131_072
    /// How published messages carry the well-known attributes; default ``AttributeMapping/properties``.
    public var attributes: AttributeMapping = .properties
    /// TLS settings; `nil` for plain `amqp://`.
    public var tls: TLSSettings?

    /// Plain-text settings with the documented defaults.
    public init() {}

    public var description: String {
        let vhost = virtualHost == "/" ? "" : "/" + virtualHost.addingPercentEncodingForPath()
        let nodes = hosts.map(\.description).joined(separator: ",")
        return "\(tls == nil ? "amqp" : "amqps")://\(username):******@\(nodes)\(vhost)"
    }
}

/// `kafka://host1:9092,host2:9092[?options]`: a Kafka cluster's bootstrap servers.
///
/// Port defaults to 9092. Options: `client_id` (default `courier`), `partitions` (for topics
/// Courier creates, default 4), `replication_factor` (default -1, the broker's default),
/// `security_protocol` (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`), `sasl_mechanism`,
/// `cacertfile`, `certfile`, `keyfile`, `verify`, `create_topics` (`admin`, `auto` or `off`;
/// see ``TopicCreation``), `retry_topics` (`true` or `false`; see ``retryTopics``),
/// `connection_timeout` (seconds to wait for a bootstrap server at connect, default 10, as for
/// `amqp://`; when every server refuses, connect fails sooner), and any
/// librdkafka property prefixed `rdkafka.`
/// (`rdkafka.linger.ms=5`). User and password in the URL are the SASL credentials.
public struct KafkaSettings: Sendable, Hashable, CustomStringConvertible {
    /// How a missing topic comes to exist when Courier first publishes to or reads it.
    public enum TopicCreation: String, Sendable, Hashable {
        /// Courier creates it with the Admin API (CreateTopics) with ``KafkaSettings/partitions``
        /// and ``KafkaSettings/replicationFactor``. The default; URL `create_topics=admin`.
        case admin
        /// The broker creates it on first use (its `auto.create.topics.enable`, its default
        /// partition count). For brokers without the Admin API, such as librdkafka's mock
        /// cluster. URL `create_topics=auto`.
        case auto
        /// Never: a missing topic is an error (``CourierError/Code/notFound``). URL
        /// `create_topics=off`.
        case off
    }

    /// A bootstrap server.
    public struct Server: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public init(host: String, port: Int = 9092) {
            self.host = host
            self.port = port
        }
        public var description: String { "\(URLParser.format(host: host)):\(port)" }
    }

    public var bootstrapServers: [Server]
    public var clientID: String = "courier"
    public var partitions: Int = 4
    public var replicationFactor: Int = -1
    /// How missing topics are created. Default ``TopicCreation/admin``.
    public var topicCreation: TopicCreation = .admin
    /// Whether a nack republishes the message to a retry topic (durable delays, but a nacked
    /// message no longer holds back later messages of its key) instead of redelivering it in
    /// order from the consuming process. Default false; URL `retry_topics=true`.
    public var retryTopics = false
    /// How long connecting waits for a bootstrap server to answer, in seconds. Default 10; URL
    /// `connection_timeout`. When every bootstrap server refuses the connection, connecting
    /// fails after librdkafka's reconnect attempts (about a second), without waiting this long.
    public var connectionTimeoutSeconds = 10
    public var securityProtocol: String = "plaintext"
    public var saslMechanism: String?
    public var username: String?
    public var password: Secret?
    public var tls: TLSSettings?
    /// librdkafka properties passed through unchanged.
    public var properties: [String: String] = [:]

    /// Settings for the given bootstrap servers, with the documented defaults.
    public init(bootstrapServers: [Server]) {
        self.bootstrapServers = bootstrapServers
    }

    public var description: String {
        let credentials = username.map { "\($0):******@" } ?? ""
        return "kafka://\(credentials)\(bootstrapServers.map(\.description).joined(separator: ","))"
    }
}

extension String {
    func addingPercentEncodingForPath() -> String {
        var result = ""
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                result.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                result += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return result
    }
}
