import Courier
import Testing

@Suite("Transport URLs")
struct TransportURLTests {
    @Test func memoryURLWithoutNameIsAPrivateBroker() throws {
        guard case .memory(let settings) = try TransportURL("memory://") else { Issue.record("not memory"); return }
        #expect(settings.brokerName == nil)
        #expect(settings.configuration == InMemoryBroker.Configuration())
    }

    @Test func memoryURLTakesNameAndLimits() throws {
        guard
            case .memory(let settings) = try TransportURL(
                "memory://orders?capacity=10&overflow=reject&retention=0&max_payload=64&ordered=false")
        else { Issue.record("not memory"); return }
        #expect(settings.brokerName == "orders")
        #expect(settings.configuration.queueCapacity == 10)
        #expect(settings.configuration.overflow == .reject)
        #expect(settings.configuration.retention == 0)
        #expect(settings.configuration.maxPayloadSize == 64)
        #expect(settings.configuration.ordered == false)
    }

    @Test func amqpDefaultsFollowTheRabbitMQURISpec() throws {
        guard case .amqp(let settings) = try TransportURL("amqp://") else { Issue.record("not amqp"); return }
        #expect(settings.host == "localhost")
        #expect(settings.port == 5672)
        #expect(settings.username == "guest")
        #expect(settings.password.revealed == "guest")
        #expect(settings.virtualHost == "/")
        #expect(settings.tls == nil)
        #expect(settings.heartbeatSeconds == 30)
        #expect(settings.attributes == .properties)
    }

    @Test func amqpURLWithEverything() throws {
        let url =
            "amqp://shop%40svc:p%40ss:w0rd@rabbit.internal:5673/%2Fshop?heartbeat=10&prefetch=50&queue_type=quorum&connection_timeout=3&frame_max=8192&attributes=headers"
        guard case .amqp(let settings) = try TransportURL(url) else { Issue.record("not amqp"); return }
        #expect(settings.host == "rabbit.internal")
        #expect(settings.port == 5673)
        #expect(settings.username == "shop@svc")
        #expect(settings.password.revealed == "p@ss:w0rd")
        #expect(settings.virtualHost == "/shop")
        #expect(settings.heartbeatSeconds == 10)
        #expect(settings.prefetch == 50)
        #expect(settings.queueType == .quorum)
        #expect(settings.connectionTimeoutSeconds == 3)
        #expect(settings.frameMax == 8192)
        #expect(settings.attributes == .headers)
    }

    /// A cluster's nodes, listed with commas: a port left out is the scheme's default, the
    /// description names every node and hides the password.
    @Test func amqpURLListsAClustersNodes() throws {
        guard case .amqp(let settings) = try TransportURL("amqp://u:secret@h1:5681,[::1]:5682,h3/shop?host_order=shuffle")
        else { Issue.record("not amqp"); return }
        #expect(settings.hosts.map(\.description) == ["h1:5681", "[::1]:5682", "h3:5672"])
        #expect(settings.host == "h1" && settings.port == 5681, "host and port are the first node's")
        #expect(settings.hostOrder == .shuffle)
        #expect(settings.description == "amqp://u:******@h1:5681,[::1]:5682,h3:5672/shop")
        #expect(!"\(try TransportURL("amqp://u:secret@h1:5681,h2:5682/"))".contains("secret"))
        guard case .amqp(let tls) = try TransportURL("amqps://a,b:6000/") else { Issue.record("not amqp"); return }
        #expect(tls.hosts == [AMQPSettings.Endpoint(host: "a", port: 5671), AMQPSettings.Endpoint(host: "b", port: 6000)])
        guard case .amqp(let one) = try TransportURL("amqp://a/") else { Issue.record("not amqp"); return }
        #expect(one.hosts == [AMQPSettings.Endpoint(host: "a")] && one.hostOrder == .inOrder)
    }

    @Test func amqpsDefaultsToPort5671AndPeerVerification() throws {
        guard case .amqp(let settings) = try TransportURL("amqps://u:p@host/vh?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
        else { Issue.record("not amqp"); return }
        #expect(settings.port == 5671)
        #expect(settings.virtualHost == "vh")
        #expect(settings.tls?.caCertificateFile == "/ca.pem")
        #expect(settings.tls?.certificateFile == "/c.pem")
        #expect(settings.tls?.keyFile == "/k.pem")
        #expect(settings.tls?.verifyPeer == true)
    }

    @Test func ipv6Hosts() throws {
        guard case .amqp(let settings) = try TransportURL("amqp://[::1]:5999") else { Issue.record("not amqp"); return }
        #expect(settings.host == "::1")
        #expect(settings.port == 5999)
        #expect(settings.description == "amqp://guest:******@[::1]:5999")
    }

    @Test func kafkaURLWithSeveralServersAndPassThroughProperties() throws {
        let url =
            "kafka://alice:s3cret@k1:19092,k2,[::1]:9093?client_id=shop&partitions=6&replication_factor=3&security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512&rdkafka.linger.ms=5&verify=verify_none&create_topics=auto&retry_topics=true"
        guard case .kafka(let settings) = try TransportURL(url) else { Issue.record("not kafka"); return }
        #expect(
            settings.bootstrapServers == [.init(host: "k1", port: 19092), .init(host: "k2", port: 9092), .init(host: "::1", port: 9093)])
        #expect(settings.clientID == "shop")
        #expect(settings.partitions == 6)
        #expect(settings.replicationFactor == 3)
        #expect(settings.securityProtocol == "sasl_ssl")
        #expect(settings.saslMechanism == "SCRAM-SHA-512")
        #expect(settings.username == "alice")
        #expect(settings.password?.revealed == "s3cret")
        #expect(settings.properties == ["linger.ms": "5"])
        #expect(settings.tls?.verifyPeer == false)
        #expect(settings.topicCreation == .auto)
        #expect(settings.retryTopics)
        guard case .kafka(let plain) = try TransportURL("kafka://k1") else { Issue.record("not kafka"); return }
        #expect(plain.topicCreation == .admin)
        #expect(!plain.retryTopics)
    }

    @Test(arguments: [
        ("localhost:5672", "no scheme"),
        ("http://host", "unknown scheme 'http'"),
        ("amqp://host:99999/", "the port '99999'"),
        ("amqp://host:56x2/", "the port '56x2'"),
        ("amqp://a,,b/", "the host list 'a,,b' has an empty entry"),
        ("amqp://a,b,/", "has an empty entry"),
        ("amqp://a:5672,a/", "the host list names a:5672 twice"),
        ("amqp://a,:5673/", "node ':5673' in the host list has no host"),
        ("amqp://a,b:99999/", "the port '99999'"),
        ("amqp://a,b/?host_order=random", "option host_order is 'random'; use in_order or shuffle"),
        ("amqp://host/a/b", "percent-encode it as %2F"),
        ("amqp://host/?heartbeat=-1", "option heartbeat is '-1'"),
        ("amqp://host/?prefetch", "option 'prefetch' has no value"),
        ("amqp://host/?prefetch=1&prefetch=2", "given twice"),
        ("amqp://host/?prefech=10", "unknown option 'prefech'"),
        ("amqp://host/?queue_type=stream", "queue_type is 'stream'"),
        ("amqp://host/?attributes=table", "option attributes is 'table'; use properties or headers"),
        ("amqp://host/?cacertfile=/ca.pem", "needs TLS"),
        ("amqps://host/?certfile=/c.pem", "certfile and keyfile go together"),
        ("amqp://host/%zz", "invalid percent-encoding"),
        ("amqp://[::1/", "no closing ']'"),
        ("amqp://ho st/", "the host 'ho st'"),
        ("kafka://", "names no bootstrap server"),
        ("kafka://a,,b", "empty entry"),
        ("kafka://a/topic", "take no path"),
        ("kafka://a?security_protocol=tls", "security_protocol is 'tls'"),
        ("kafka://a?create_topics=yes", "create_topics is 'yes'"),
        ("memory://x?capacity=0", "option capacity is '0'"),
        ("memory://bad name", "broker name"),
        ("memory://u:p@x", "no user or password"),
        ("amqp://host/#frag", "fragments"),
    ])
    func badURLsNameTheBadPart(url: String, expected: String) {
        do {
            _ = try TransportURL(url)
            Issue.record("\(url) parsed")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func passwordsNeverAppearInDescriptionsOrErrors() throws {
        let secret = "hunter2-top-secret"
        let good = try TransportURL("amqp://admin:\(secret)@host/")
        #expect(!good.description.contains(secret))
        #expect(!"\(good)".contains(secret))
        #expect(!String(reflecting: good).contains(secret))
        #expect(good.description == "amqp://admin:******@host:5672")
        let kafka = try TransportURL("kafka://admin:\(secret)@k1")
        #expect(!kafka.description.contains(secret))
        for bad in [
            "amqp://admin:\(secret)@host:bad/", "amqp://admin:\(secret)@host/?nope=1", "kafka://admin:\(secret)@/x",
            "amqp://admin:\(secret)@host/%zz",
        ] {
            do {
                _ = try TransportURL(bad)
                Issue.record("\(bad) parsed")
            } catch {
                #expect(!error.message.contains(secret), "\(error.message)")
                #expect(!error.description.contains(secret))
                #expect(error.message.contains("******"), "\(error.message)")
            }
        }
    }

    @Test func redactionHandlesPasswordsWithAtSigns() {
        #expect(TransportURL.redacted("amqp://u:p@ss@host/vh") == "amqp://u:******@host/vh")
        #expect(TransportURL.redacted("amqp://host/vh") == "amqp://host/vh")
        #expect(TransportURL.redacted("amqp://user@host/") == "amqp://user@host/")
    }

    @Test func secretsPrintAsStars() {
        let secret = Secret("hunter2")
        #expect("\(secret)" == "******")
        #expect(String(reflecting: secret) == "Secret(******)")
        #expect(secret.revealed == "hunter2")
    }
}
