import Courier
import CourierConformance
import CourierRabbitMQ
import Testing
import Foundation

@Test func debugScenarioX() async throws {
    let n = Int(ProcessInfo.processInfo.environment["SCEN"] ?? "16")!
    FileHandle.standardError.write("running \(n)\n".data(using: .utf8)!)
    let r = try await RabbitMQConformanceTests.suite.run(ConformanceScenario(rawValue: n)!)
    FileHandle.standardError.write("\(r)\n".data(using: .utf8)!)
}
