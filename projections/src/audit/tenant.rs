//! The sentences of a tenant's events: its registration, its shared account, its login mode
//! and JIT policy.

use super::names::Names;
use super::text::policy_text;
use super::Line;
use latchkey_domain::tenant::TenantEvent;
use latchkey_store::RecordedEvent;

/// The line of a tenant's event, filed under the tenant.
pub(super) fn line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &TenantEvent,
) -> latchkey_sql::Result<Line> {
    Ok(match event {
        TenantEvent::TenantRegistered(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = format!(
                "{actor} registered the customer tenant {} with technician login mode {}; \
                 JIT policy: {}",
                e.name,
                e.login_mode,
                policy_text(&e.policy)
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
        TenantEvent::SharedAccountAssigned(e) => {
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{tenant} was given the shared technician account {}",
                e.account
            );
            Line::new(e.at, names.recorded_actor(recorded)?, sentence)
                .tenant(e.tenant_id)
                .account(&e.account)
        }
        TenantEvent::LoginModeChanged(e) => {
            let actor = names.actor(&e.by)?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{actor} changed the technician login mode of {tenant} from {} to {}",
                e.from, e.to
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
        TenantEvent::JitPolicyChanged(e) => {
            let actor = names.actor(&e.by)?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{actor} changed the JIT policy of {tenant} to: {}",
                policy_text(&e.policy)
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
    })
}
