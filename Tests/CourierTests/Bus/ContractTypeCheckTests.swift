import Foundation
import Testing

/// `publish` takes events and `send` takes commands: the other way round must not compile.
/// Type-checks small programs against the built `Courier` and `CourierBus` modules with `swiftc`.
@Suite("MessageBus contracts at compile time")
struct ContractTypeCheckTests {
    static let prelude = """
        import Courier
        import CourierBus
        struct Registered: IntegrationEvent { var id: Int }
        struct Create: IntegrationCommand { var id: Int }
        func use(_ bus: MessageBus) async throws {

        """

    /// The directory with the built modules, next to the test binary.
    func modulesDirectory() throws -> URL {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = binary.deletingLastPathComponent()
        for _ in 0..<4 {
            let modules = directory.appendingPathComponent("Modules")
            if FileManager.default.fileExists(atPath: modules.appendingPathComponent("CourierBus.swiftmodule").path) { return modules }
            directory.deleteLastPathComponent()
        }
        throw TimeoutError(what: "the built Courier module near \(binary.path) (run the tests with swift test)")
    }

    /// Type-checks `body` inside an async function with a bus; returns the exit status and
    /// the compiler's diagnostics.
    func typeCheck(_ body: String) throws -> (status: Int32, output: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("courier-typecheck-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("main.swift")
        try (Self.prelude + body + "\n}\n").write(to: file, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["swiftc", "-typecheck", "-swift-version", "6", "-I", try modulesDirectory().path, file.path]
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    @Test func eventsArePublishedAndCommandsSent() throws {
        let result = try typeCheck("try await bus.publish(Registered(id: 1)); try await bus.send(Create(id: 1))")
        #expect(result.status == 0, "the right way round compiles: \(result.output)")
    }

    @Test func publishingACommandDoesNotCompile() throws {
        let result = try typeCheck("try await bus.publish(Create(id: 1))")
        #expect(result.status != 0)
        #expect(result.output.contains("IntegrationEvent"), "\(result.output)")
    }

    @Test func sendingAnEventDoesNotCompile() throws {
        let result = try typeCheck("try await bus.send(Registered(id: 1))")
        #expect(result.status != 0)
        #expect(result.output.contains("IntegrationCommand"), "\(result.output)")
    }
}
