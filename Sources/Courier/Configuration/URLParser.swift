/// The hand-written parser behind ``TransportURL``: Foundation's `URL` accepts neither Kafka's
/// host lists nor RabbitMQ's percent-encoded virtual hosts the way brokers mean them.
///
/// Errors never quote user info: the URL is shown through ``TransportURL/redacted(_:)``, and a
/// part is quoted only when it lies wholly after the URL's last `@` (everything before it may
/// be a password with a raw reserved character in it).
struct URLParser {
    private let text: String
    private let shown: String
    /// The URL's last `@`: nothing before it is ever quoted.
    private let lastAt: String.Index?
    /// Whether the query starts before the last `@` (a raw `?` in a password), so that option
    /// names and values may hold pieces of the password.
    private var optionsMayHoldSecrets = false
    /// Whether an `@` lies beyond the authority, as when a password holds a raw `/`, `?` or `#`.
    private var misplacedAt = false

    init(_ string: String) {
        self.text = string.trimmingWhitespace()
        self.shown = TransportURL.redacted(text)
        self.lastAt = text.lastIndex(of: "@")
    }

    private func fail(_ problem: String) -> CourierError {
        var message = "invalid transport URL '\(shown)': \(problem)"
        if misplacedAt {
            message +=
                " (an '@' follows a '/', '?' or '#': if the password holds '/', '?', '#' or '@', percent-encode them as %2F, %3F, %23 and %40)"
        }
        return CourierError(.invalidURL, message)
    }

    /// `'part'`, or a placeholder when `part` starts before the URL's last `@`.
    private func quote(_ part: Substring) -> String {
        if let lastAt, part.startIndex < lastAt { return "(not shown: it comes before the URL's last '@' and may hold the password)" }
        return "'\(part)'"
    }

    /// `'value'` for an option name or value, or a placeholder when the options may hold
    /// pieces of a password.
    private func quoteOption(_ value: String) -> String {
        optionsMayHoldSecrets ? "(not shown: the options come before the URL's last '@')" : "'\(value)'"
    }

    mutating func parse() throws(CourierError) -> TransportURL {
        guard let separator = text.range(of: "://") else {
            if let lastAt { misplacedAt = text[..<lastAt].contains(":") }
            throw fail("it has no scheme; write memory://, amqp://host, amqps://host or kafka://host:9092")
        }
        let scheme = text[..<separator.lowerBound]
        var rest = text[separator.upperBound...]
        if let lastAt, let end = rest.firstIndex(where: { "/?#".contains($0) }), end < lastAt {
            misplacedAt = true
        }
        if let hash = rest.firstIndex(of: "#") {
            throw fail("fragments (\(quote(rest[hash...]))) are not allowed; percent-encode '#' as %23")
        }
        var query: Substring = ""
        if let question = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: question)...]
            rest = rest[..<question]
            if let lastAt, question < lastAt { optionsMayHoldSecrets = true }
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = rest[slash...]
        var userInfo: Substring?
        var hosts = authority
        if let at = authority.lastIndex(of: "@") {
            userInfo = authority[..<at]
            hosts = authority[authority.index(after: at)...]
        }
        var options = try parseQuery(query)
        let result: TransportURL
        switch scheme.lowercased() {
        case "memory":
            result = .memory(try memory(name: hosts, userInfo: userInfo, path: path, options: &options))
        case "amqp", "amqps":
            result = .amqp(try amqp(tls: scheme.lowercased() == "amqps", hosts: hosts, userInfo: userInfo, path: path, options: &options))
        case "kafka":
            result = .kafka(try kafka(hosts: hosts, userInfo: userInfo, path: path, options: &options))
        default:
            throw fail("unknown scheme \(quote(scheme)); supported: memory, amqp, amqps, kafka")
        }
        if let unknown = options.keys.sorted().first {
            throw fail(
                "unknown option \(quoteOption(unknown)) for \(scheme.lowercased()) URLs; see the TransportURL documentation for the options"
            )
        }
        return result
    }

    // MARK: Schemes

    private func memory(name: Substring, userInfo: Substring?, path: Substring, options: inout [String: String]) throws(CourierError)
        -> MemorySettings
    {
        if userInfo != nil { throw fail("memory URLs take no user or password") }
        if !(path.isEmpty || path == "/") { throw fail("memory URLs take no path (\(quote(path)))") }
        var settings = MemorySettings(brokerName: name.isEmpty ? nil : String(name))
        if let brokerName = settings.brokerName, !DestinationName.isValid(brokerName) {
            throw fail("broker name \(quote(name)) must be letters, digits, '.', '_' or '-'")
        }
        if let value = options.removeValue(forKey: "capacity") {
            settings.configuration.queueCapacity = try integer("capacity", value, min: 1)
        }
        if let value = options.removeValue(forKey: "capacity_bytes") {
            settings.configuration.queueByteCapacity = try integer("capacity_bytes", value, min: 1)
        }
        if let value = options.removeValue(forKey: "retention_bytes") {
            settings.configuration.retentionBytes = try integer("retention_bytes", value, min: 0)
        }
        if let value = options.removeValue(forKey: "retention") {
            settings.configuration.retention = try integer("retention", value, min: 0)
        }
        if let value = options.removeValue(forKey: "max_payload") {
            settings.configuration.maxPayloadSize = try integer("max_payload", value, min: 0)
        }
        if let value = options.removeValue(forKey: "ordered") { settings.configuration.ordered = try boolean("ordered", value) }
        if let value = options.removeValue(forKey: "overflow") {
            switch value {
            case "backpressure": settings.configuration.overflow = .backpressure
            case "reject": settings.configuration.overflow = .reject
            default: throw fail("option overflow is \(quoteOption(value)); use backpressure or reject")
            }
        }
        return settings
    }

    private func amqp(tls: Bool, hosts: Substring, userInfo: Substring?, path: Substring, options: inout [String: String])
        throws(CourierError) -> AMQPSettings
    {
        var settings = AMQPSettings()
        if tls { settings.tls = TLSSettings() }
        let defaultPort = tls ? 5671 : 5672
        // One node may leave out its host (`amqp://:5673` is localhost); in a list each names one.
        let parts = hosts.isEmpty ? [] : hosts.split(separator: ",", omittingEmptySubsequences: false)
        var nodes: [AMQPSettings.Endpoint] = []
        for part in parts {
            guard !part.isEmpty else { throw fail("the host list \(quote(hosts)) has an empty entry") }
            let (host, port) = try hostAndPort(part)
            guard !host.isEmpty || parts.count == 1 else { throw fail("node \(quote(part)) in the host list has no host") }
            let node = AMQPSettings.Endpoint(host: host.isEmpty ? "localhost" : host, port: port ?? defaultPort)
            if nodes.contains(node) { throw fail("the host list names \(node) twice") }
            nodes.append(node)
        }
        settings.hosts = nodes.isEmpty ? [AMQPSettings.Endpoint(host: "localhost", port: defaultPort)] : nodes
        if let value = options.removeValue(forKey: "host_order") {
            guard let order = AMQPSettings.HostOrder(rawValue: value) else {
                throw fail("option host_order is \(quoteOption(value)); use in_order or shuffle")
            }
            settings.hostOrder = order
        }
        if let userInfo {
            let (user, password) = try credentials(userInfo)
            settings.username = user
            settings.password = password ?? ""
        }
        if path.isEmpty || path == "/" {
            settings.virtualHost = "/"
        } else {
            let encoded = path.dropFirst()
            // A raw '@' here is far more often a mistyped user info (amqp:///user:pw@host)
            // than a virtual host name; refusing it keeps such a password out of descriptions.
            if encoded.contains("@") { throw fail("the virtual host \(quote(encoded)) contains a raw '@'; percent-encode it as %40") }
            if encoded.contains("/") { throw fail("the virtual host \(quote(encoded)) contains '/'; percent-encode it as %2F") }
            settings.virtualHost = try decode(encoded, what: "virtual host")
        }
        if let value = options.removeValue(forKey: "heartbeat") {
            settings.heartbeatSeconds = try integer("heartbeat", value, min: 0, max: 65535)
        }
        if let value = options.removeValue(forKey: "connection_timeout") {
            settings.connectionTimeoutSeconds = try integer("connection_timeout", value, min: 1, max: 86_400)
        }
        if let value = options.removeValue(forKey: "prefetch") { settings.prefetch = try integer("prefetch", value, min: 1, max: 65535) }
        if let value = options.removeValue(forKey: "frame_max") {
            settings.frameMax = try integer("frame_max", value, min: 4096, max: Int(Int32.max))
        }
        if let value = options.removeValue(forKey: "queue_type") {
            guard let type = AMQPSettings.QueueType(rawValue: value) else {
                throw fail("option queue_type is \(quoteOption(value)); use classic or quorum")
            }
            settings.queueType = type
        }
        if let value = options.removeValue(forKey: "attributes") {
            guard let mapping = AMQPSettings.AttributeMapping(rawValue: value) else {
                throw fail("option attributes is \(quoteOption(value)); use properties or headers")
            }
            settings.attributes = mapping
        }
        let tlsSettings = try tlsOptions(&options, scheme: tls ? "amqps" : "amqp", enabled: tls)
        if tls { settings.tls = tlsSettings }
        return settings
    }

    private func kafka(hosts: Substring, userInfo: Substring?, path: Substring, options: inout [String: String]) throws(CourierError)
        -> KafkaSettings
    {
        if !(path.isEmpty || path == "/") { throw fail("kafka URLs take no path (\(quote(path))); topics are named in code") }
        guard !hosts.isEmpty else { throw fail("it names no bootstrap server; write kafka://host:9092[,host2:9092]") }
        var servers: [KafkaSettings.Server] = []
        for part in hosts.split(separator: ",", omittingEmptySubsequences: false) {
            guard !part.isEmpty else { throw fail("the server list \(quote(hosts)) has an empty entry") }
            let (host, port) = try hostAndPort(part)
            guard !host.isEmpty else { throw fail("server \(quote(part)) has no host") }
            servers.append(KafkaSettings.Server(host: host, port: port ?? 9092))
        }
        var settings = KafkaSettings(bootstrapServers: servers)
        if let userInfo {
            let (user, password) = try credentials(userInfo)
            settings.username = user
            settings.password = password
        }
        if let value = options.removeValue(forKey: "client_id") { settings.clientID = value }
        if let value = options.removeValue(forKey: "connection_timeout") {
            settings.connectionTimeoutSeconds = try integer("connection_timeout", value, min: 1, max: 86_400)
        }
        if let value = options.removeValue(forKey: "partitions") { settings.partitions = try integer("partitions", value, min: 1) }
        if let value = options.removeValue(forKey: "replication_factor") {
            settings.replicationFactor = try integer("replication_factor", value, min: -1)
        }
        if let value = options.removeValue(forKey: "create_topics") {
            guard let creation = KafkaSettings.TopicCreation(rawValue: value.lowercased()) else {
                throw fail("option create_topics is \(quoteOption(value)); use admin, auto or off")
            }
            settings.topicCreation = creation
        }
        if let value = options.removeValue(forKey: "retry_topics") {
            guard let flag = Bool(value.lowercased()) else { throw fail("option retry_topics is \(quoteOption(value)); use true or false") }
            settings.retryTopics = flag
        }
        if let value = options.removeValue(forKey: "sasl_mechanism") { settings.saslMechanism = value }
        if let value = options.removeValue(forKey: "security_protocol") {
            let known = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
            guard known.contains(value.lowercased()) else {
                throw fail("option security_protocol is \(quoteOption(value)); use one of \(known.joined(separator: ", "))")
            }
            settings.securityProtocol = value.lowercased()
        }
        let usesTLS = settings.securityProtocol.hasSuffix("ssl")
        let tlsSettings = try tlsOptions(&options, scheme: "kafka", enabled: usesTLS)
        if usesTLS { settings.tls = tlsSettings }
        for key in options.keys where key.hasPrefix("rdkafka.") {
            let property = String(key.dropFirst("rdkafka.".count))
            guard !property.isEmpty else { throw fail("option 'rdkafka.' names no librdkafka property") }
            settings.properties[property] = options.removeValue(forKey: key)
        }
        return settings
    }

    // MARK: Parts

    private func tlsOptions(_ options: inout [String: String], scheme: String, enabled: Bool) throws(CourierError) -> TLSSettings {
        var tls = TLSSettings()
        let keys = ["cacertfile", "certfile", "keyfile", "verify"]
        if !enabled, let key = keys.first(where: { options[$0] != nil }) {
            throw fail("option \(key) needs TLS; use amqps:// or security_protocol=ssl")
        }
        tls.caCertificateFile = options.removeValue(forKey: "cacertfile")
        tls.certificateFile = options.removeValue(forKey: "certfile")
        tls.keyFile = options.removeValue(forKey: "keyfile")
        if let value = options.removeValue(forKey: "verify") {
            switch value {
            case "verify_peer": tls.verifyPeer = true
            case "verify_none": tls.verifyPeer = false
            default: throw fail("option verify is \(quoteOption(value)); use verify_peer or verify_none")
            }
        }
        if (tls.certificateFile == nil) != (tls.keyFile == nil) {
            throw fail("certfile and keyfile go together: give both for a client certificate, or neither")
        }
        return tls
    }

    private func credentials(_ userInfo: Substring) throws(CourierError) -> (String, Secret?) {
        // Neither the user name nor the password is ever quoted in these errors.
        let colon = userInfo.firstIndex(of: ":")
        guard let user = URLParser.percentDecode(userInfo[..<(colon ?? userInfo.endIndex)]) else {
            throw fail("the user name has an invalid percent-encoding")
        }
        guard let colon else { return (user, nil) }
        // The password is decoded but never shown, not even in this error.
        guard let password = URLParser.percentDecode(userInfo[userInfo.index(after: colon)...]) else {
            throw fail("the password has an invalid percent-encoding")
        }
        return (user, Secret(password))
    }

    private func hostAndPort(_ text: Substring) throws(CourierError) -> (String, Int?) {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw fail("the IPv6 address \(quote(text)) has no closing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected \(quote(after)) after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            host = text
        }
        for index in host.indices where !(host[index].isLetter || host[index].isNumber || ".-_:".contains(host[index])) {
            throw fail("the host \(quote(host)) contains \(quote(host[index...index]))")
        }
        guard let portText else { return (String(host), nil) }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw fail("the port \(quote(portText)) must be a number from 1 to 65535")
        }
        host = host.isEmpty ? "" : host
        return (String(host), port)
    }

    private func parseQuery(_ query: Substring) throws(CourierError) -> [String: String] {
        var options: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = try decode(parts[0], what: "option name")
            guard parts.count == 2 else { throw fail("option \(quoteOption(key)) has no value; write NAME=VALUE") }
            guard options[key] == nil else { throw fail("option \(quoteOption(key)) is given twice") }
            options[key] = try decode(parts[1], what: "value of option \(quoteOption(key))")
        }
        return options
    }

    private func integer(_ name: String, _ value: String, min: Int, max: Int = Int.max) throws(CourierError) -> Int {
        guard let number = Int(value), number >= min, number <= max else {
            let range = max == Int.max ? "\(min) or more" : "from \(min) to \(max)"
            throw fail("option \(name) is \(quoteOption(value)); it must be a whole number \(range)")
        }
        return number
    }

    private func boolean(_ name: String, _ value: String) throws(CourierError) -> Bool {
        switch value.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: throw fail("option \(name) is \(quoteOption(value)); use true or false")
        }
    }

    private func decode(_ text: Substring, what: String) throws(CourierError) -> String {
        guard let decoded = URLParser.percentDecode(text) else {
            throw fail("the \(what) \(quote(text)) has an invalid percent-encoding")
        }
        return decoded
    }

    static func percentDecode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    static func format(host: String) -> String {
        host.contains(":") ? "[\(host)]" : host
    }
}

extension String {
    func trimmingWhitespace() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
