//! Every resource to the desired state, in the order references need: brokers and
//! triggers, then channels, subscriptions and flows (which may reply to brokers),
//! then the policies that select any of those addresses.

use super::validate::{compile_brokers_and_triggers, Desired, ResolveContext};
use super::{Located, Resource};

/// Compiles every resource. Validation is per resource: an invalid one is reported
/// in `problems` and left out while every valid one runs.
pub fn compile(resources: &[Located<Resource>], ctx: &ResolveContext<'_>) -> Desired {
    let mut desired = compile_brokers_and_triggers(resources, ctx);
    super::messaging::compile_messaging(resources, ctx, &mut desired);
    super::sourcing::compile_sources(resources, ctx, &mut desired);
    super::eventtype::check_event_types(resources, &mut desired.problems);
    let owners = super::messaging::address_owners(resources)
        .into_iter()
        .filter(|(k, _)| desired.brokers.contains_key(k))
        .collect();
    desired.policies = super::access::compile_policies(resources, &owners, &mut desired.problems);
    desired
}
