/// How a transport's connections to its broker are doing, from ``Transport/health()``.
///
/// Each connection the transport holds (RabbitMQ: one publishing, one consuming; Kafka: the
/// producer and one client per group member; in memory: one) reports its state, the node it
/// is connected to, how long ago the broker was last heard from, and the last error. The
/// transport is healthy when every connection is connected; see each transport for how soon
/// it notices a lost broker.
public struct TransportHealth: Sendable, CustomStringConvertible {
    /// One connection to the broker.
    public struct Connection: Sendable, CustomStringConvertible {
        /// Where a connection is in its life.
        public enum State: String, Sendable, Hashable {
            /// Connected: the broker answers.
            case connected
            /// Connected as far as the socket knows, but the broker has been silent for longer
            /// than the transport allows (RabbitMQ: two heartbeats); it will be closed and
            /// reconnected.
            case unresponsive
            /// Not connected (yet, or any more) and trying (with backoff);
            /// ``Connection/lastError`` says why.
            case reconnecting
            /// Shut down (``Transport/shutdown()`` was called).
            case closed
        }

        /// What the connection is for: `publish`, `consume`, `producer`, `group g of topic t`.
        public var name: String
        /// Where it is.
        public var state: State
        /// The node it is connected to (or trying), `host:port`, when the transport knows it.
        public var node: String?
        /// How long ago the broker last sent anything (a frame, a heartbeat, a response), when
        /// the transport tracks it.
        public var sinceLastContact: Duration?
        /// The last connection error, while not connected.
        public var lastError: String?
        /// Messages behind the end of the partitions this group member reads (Kafka: the
        /// high watermark minus the position, summed), when the broker has told it.
        public var lag: Int?

        /// A connection's report.
        public init(
            name: String, state: State, node: String? = nil, sinceLastContact: Duration? = nil, lastError: String? = nil,
            lag: Int? = nil
        ) {
            self.name = name
            self.state = state
            self.node = node
            self.sinceLastContact = sinceLastContact
            self.lastError = lastError
            self.lag = lag
        }

        /// `name: state` with the node, the last contact, the lag and the error when known.
        public var description: String {
            var parts = ["\(name): \(state.rawValue)"]
            if let node { parts.append("node \(node)") }
            if let sinceLastContact { parts.append("last contact \(Self.seconds(sinceLastContact)) ago") }
            if let lag { parts.append("lag \(lag)") }
            if let lastError { parts.append("last error: \(lastError)") }
            return parts.joined(separator: ", ")
        }

        private static func seconds(_ duration: Duration) -> String {
            let (seconds, attoseconds) = duration.components
            let tenths = Int(seconds) * 10 + Int(attoseconds / 100_000_000_000_000_000)
            return "\(tenths / 10).\(tenths % 10) s"
        }
    }

    /// The broker's system (``TransportCapabilities/system``).
    public var system: String
    /// Every connection the transport holds.
    public var connections: [Connection]

    /// A report.
    public init(system: String, connections: [Connection]) {
        self.system = system
        self.connections = connections
    }

    /// Whether every connection is connected (and there is at least one).
    public var isHealthy: Bool {
        !connections.isEmpty && connections.allSatisfy { $0.state == .connected }
    }

    /// `system: healthy|unhealthy` and one line per connection.
    public var description: String {
        (["\(system): \(isHealthy ? "healthy" : "unhealthy")"] + connections.map { "  \($0)" }).joined(separator: "\n")
    }
}
