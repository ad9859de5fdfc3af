import Configuration
import Courier
import CourierBus
import CourierTransports
import Foundation
import Logging
import Synchronization
import Testing

/// Property-style test: thousands of malformed (and some well-formed) transport URLs, built
/// from shapes users really write, each carrying a marker password split around a raw reserved
/// character. Neither half of the marker may appear in any error, description, reflection,
/// `dump`, or log line at trace level, whether the URL is parsed directly or read through
/// `MessageBus.connect(config:)`.
@Suite("URL redaction")
struct URLRedactionTests {
    static let head = "pwHEADq7"
    static let tail = "pwTAILz9"

    static let schemes = ["amqp", "amqps", "kafka", "memory", "nats", "AMQP", ""]
    static let separators = ["://", ":/", ":", "", ":///", "//"]
    static let users = ["", "user", "us%zzer", "us/er", "a@b"]
    static let passwords = [
        head + tail, head + "/" + tail, head + "#" + tail, head + "?" + tail, head + "@" + tail,
        head + ":" + tail, head + "%zz" + tail, head + "/?#" + tail, "/" + head + tail, "#" + head + tail,
        "?" + head + "=" + tail, head + "?a=b&" + tail + "=c", head + "//" + tail, head + "%2F" + tail,
        head + "[" + tail, head + "]:" + tail,
    ]
    static let hosts = ["host", "host:5672", "host:bad", "", "h1,h2", "h1,,h2", "[::1", "[::1]x", "ho st", "h:0", "host:99999"]
    static let paths = ["", "/", "/vh", "/a/b", "/%zz", "/x:y"]
    static let queries = ["", "?heartbeat=x", "?nope=1", "?prefetch", "?a=1&a=2", "#frag", "?queue_type=odd", "?capacity=-1"]

    /// A URL from one choice of each part; `nil` user leaves out the `user:password@` part.
    static func url(_ choice: [Int]) -> String {
        let user = users[choice[2]]
        let password = passwords[choice[3]]
        let userInfo = choice[2] == 0 ? ":\(password)@" : "\(user):\(password)@"
        return schemes[choice[0]] + separators[choice[1]] + userInfo + hosts[choice[4]] + paths[choice[5]] + queries[choice[6]]
    }

    static let sizes = [schemes.count, separators.count, users.count, passwords.count, hosts.count, paths.count, queries.count]

    /// Every password shape with every scheme and separator, plus a seeded random sample of
    /// the rest of the space.
    static func cases() -> [String] {
        var urls: [String] = []
        for scheme in schemes.indices {
            for separator in separators.indices {
                for password in passwords.indices {
                    urls.append(url([scheme, separator, 1, password, 1, 2, 0]))
                }
            }
        }
        var random = SplitMix64(seed: 0xC0_0123)
        for _ in 0..<4000 {
            urls.append(url(sizes.map { Int(random.next() % UInt64($0)) }))
        }
        return urls
    }

    static func leaks(_ text: String) -> Bool {
        text.contains(head) || text.contains(tail)
    }

    static func dumped(_ value: Any) -> String {
        var text = ""
        dump(value, to: &text)
        return text
    }

    @Test func noMalformedURLShapeLeaksThePassword() throws {
        var failures = 0
        var parsed = 0
        for url in Self.cases() {
            do {
                let result = try TransportURL(url)
                parsed += 1
                for text in [result.description, "\(result)", String(reflecting: result), Self.dumped(result)] {
                    #expect(!Self.leaks(text), "\(url) parsed; its description shows the password: \(text)")
                }
            } catch {
                failures += 1
                #expect(error.code == .invalidURL)
                for text in [error.message, error.description, "\(error)", String(reflecting: error), Self.dumped(error)] {
                    #expect(!Self.leaks(text), "\(url): the error shows the password: \(text)")
                }
            }
            #expect(!Self.leaks(TransportURL.redacted(url)), "redacted(\(url)) = \(TransportURL.redacted(url))")
        }
        // The space is mostly malformed, but not only: both paths are exercised.
        #expect(failures > 1000)
        #expect(parsed > 10)
    }

    @Test func throughTheBusConfigurationNoErrorOrTraceLogLeaksThePassword() async throws {
        let lines = LogCapture()
        var logger = Logger(label: "test.redaction") { _ in CapturingLogHandler(capture: lines) }
        logger.logLevel = .trace
        var checked = 0
        for url in Self.cases().prefix(1200) where (try? TransportURL(url)) == nil {
            let config = ConfigReader(
                provider: InMemoryProvider(values: ["courier.transport.url": .init(.string(url), isSecret: false)]),
                accessReporter: AccessLogger(logger: logger, level: .trace)
            )
            do {
                _ = try await MessageBus.connect(config: config)
                Issue.record("\(url) connected")
            } catch {
                for text in [String(describing: error), String(reflecting: error), Self.dumped(error)] {
                    #expect(!Self.leaks(text), "\(url): \(text)")
                }
            }
            checked += 1
        }
        #expect(checked > 500)
        #expect(!lines.all.isEmpty, "the access logger logged at trace level")
        for line in lines.all {
            #expect(!Self.leaks(line), "a trace log line shows the password: \(line)")
        }
    }

    @Test func redactionOfTheShapesUsersWrite() {
        #expect(TransportURL.redacted("amqp://u:pa/ss@host/vh") == "amqp://u:******@host/vh")
        #expect(TransportURL.redacted("amqp://u:pa#ss@host/") == "amqp://u:******@host/")
        #expect(TransportURL.redacted("amqp://u:pa?ss@host/") == "amqp://u:******@host/")
        #expect(TransportURL.redacted("amqp:user:pw@host/") == "amqp:******@host/")
        #expect(TransportURL.redacted("amqp:/user:pw@host/") == "amqp:/******@host/")
        #expect(TransportURL.redacted("us/er:pw@host") == "us/er:******@host")
        #expect(TransportURL.redacted("amqp://us/er:pw@host") == "amqp://******@host")
        #expect(TransportURL.redacted("amqp://user@host/") == "amqp://user@host/")
    }

    @Test func aRawSlashInThePasswordGetsAHintNotAQuote() {
        do {
            _ = try TransportURL("amqp://user:s3cr/t@host/")
            Issue.record("parsed")
        } catch {
            #expect(!error.message.contains("s3cr"))
            #expect(error.message.contains("%2F"), "\(error.message)")
        }
    }
}

/// A deterministic random source (SplitMix64), so that every run checks the same sample.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Log lines, as text with their metadata, kept for assertions.
final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        capture.append("\(event.level) \(event.message) \(merged) \(event.source) \(event.file)")
    }
}
