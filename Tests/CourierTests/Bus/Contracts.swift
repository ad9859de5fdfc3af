import Courier
import CourierBus

// The contracts the bus tests use, at file scope so that their names follow the convention
// without a test type's name in front.

struct CustomerRegistered: IntegrationEvent, Equatable {
    var customerID: String
    var email: String
    var messageKey: String? { customerID }
}

extension CustomerRegistered {
    /// Version 2 of the contract, side by side with version 1.
    struct V2: IntegrationEvent, Equatable {
        var customerID: String
        var email: String
        var name: String
        var messageKey: String? { customerID }
    }
}

struct CreateCustomer: IntegrationCommand, Equatable {
    var customerID: String
    var email: String
    var messageKey: String? { customerID }
}

struct CustomerCreated: IntegrationEvent, Equatable {
    var customerID: String
}

struct OrderPlaced: IntegrationEvent, Equatable {
    static let topic = "shop.orders"
    static let messageName = "shop.OrderPlaced"
    var orderID: Int
    var customer: String
    var messageKey: String? { customer }
}

struct ChargeCard: IntegrationCommand, Equatable {
    static let queue = "billing.charge-card"
    var orderID: Int
}

struct Unfixable: NonRetriableError, CustomStringConvertible {
    var description: String { "the card number is not a card number" }
}

struct Flaky: Error, CustomStringConvertible {
    var description: String { "the database did not answer" }
}
