"""One module per rule kind; each exports a `*Logic` class implementing `engine.core.ruleset.RuleLogic`."""
