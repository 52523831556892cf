"""The operator-facing FederationAdmin API, one mixin per area (grants, enrollment, query...)."""
