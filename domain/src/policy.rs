//! A tenant's technician login mode and JIT policy (DESIGN.md §2): the settings of both seed
//! products (Idemeum's login mode, EmpowerID's JIT access). Every value here is valid by
//! construction; combinations that make no sense are refused when the policy is built.

use crate::names::{AccountName, GroupName, InvalidValue, Username};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How technicians log into a tenant's computers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LoginMode {
    /// One account per technician, `msp-<username>`, kept on every computer.
    Named,
    /// One account per tenant, `msp-<4 digits>`, shared by its technicians.
    Shared,
    /// A new `<username>_<12 digits>` account per session.
    Ephemeral,
}

impl LoginMode {
    pub const ALL: [LoginMode; 3] = [LoginMode::Named, LoginMode::Shared, LoginMode::Ephemeral];

    pub fn as_str(self) -> &'static str {
        match self {
            LoginMode::Named => "named",
            LoginMode::Shared => "shared",
            LoginMode::Ephemeral => "ephemeral",
        }
    }
}

impl fmt::Display for LoginMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LoginMode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        LoginMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| InvalidValue {
                field: "login_mode",
                rule: "must be one of named, shared, ephemeral",
                got: s.chars().take(80).collect(),
            })
    }
}

/// What happens to a JIT account when its (last) session is checked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckInAction {
    /// Take the account out of the admin group and keep it.
    RemoveFromGroup,
    /// Delete the account.
    DeleteAccount,
}

/// What the agent does to an account's live logons when a session's access to it ends (the
/// account leaves the admin group or is deleted): the JIT policy's post-session actions, as
/// Windows LAPS has post-authentication actions. Without them, a technician who stayed
/// logged in keeps the admin group in that logon, and `sudo` keeps its cached credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostSessionActions {
    /// End the account's logons and processes (systemd-logind's `terminate-user` where it
    /// runs, then SIGTERM and SIGKILL), a root shell opened with `sudo` in its logon included.
    pub end_logons: bool,
    /// Remove sudo's cached credentials for the account, so `sudo` asks for the (rotated)
    /// password again.
    pub clear_sudo_credentials: bool,
}

impl PostSessionActions {
    /// Nothing is done to live logons (sessions checked out before post-session actions
    /// existed, and a policy that asks for none).
    pub const NONE: PostSessionActions = PostSessionActions {
        end_logons: false,
        clear_sudo_credentials: false,
    };

    /// Both actions.
    pub const ALL: PostSessionActions = PostSessionActions {
        end_logons: true,
        clear_sudo_credentials: true,
    };

    pub fn any(&self) -> bool {
        self.end_logons || self.clear_sudo_credentials
    }

    /// The default of each login mode: both actions in every mode. They run only when the
    /// account loses its rights (its last session's check-in), so in shared mode they never
    /// cut off another technician's session; a named account is its technician's alone; an
    /// ephemeral account is usually deleted, which a live logon would otherwise block.
    pub fn default_for(mode: LoginMode) -> Self {
        match mode {
            LoginMode::Named | LoginMode::Shared | LoginMode::Ephemeral => Self::ALL,
        }
    }
}

impl fmt::Display for PostSessionActions {
    /// The actions as the object of "was asked to …".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.end_logons, self.clear_sudo_credentials) {
            (true, true) => f.write_str("end its logons and clear its cached sudo credentials"),
            (true, false) => f.write_str("end its logons"),
            (false, true) => f.write_str("clear its cached sudo credentials"),
            (false, false) => f.write_str("leave its logons alone"),
        }
    }
}

/// Which characters generated passwords draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordAlphabet {
    pub lowercase: bool,
    pub uppercase: bool,
    pub digits: bool,
    pub symbols: bool,
}

impl PasswordAlphabet {
    pub fn classes(&self) -> usize {
        [self.lowercase, self.uppercase, self.digits, self.symbols]
            .into_iter()
            .filter(|on| *on)
            .count()
    }
}

/// Length and alphabet of the random passwords the server generates. Valid by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "PasswordPolicyFields", into = "PasswordPolicyFields")]
#[schemars(with = "PasswordPolicyFields")]
pub struct PasswordPolicy {
    length: u16,
    alphabet: PasswordAlphabet,
}

/// The serialised shape of [`PasswordPolicy`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicyFields {
    /// 12 to 128 characters.
    #[schemars(range(min = 12, max = 128))]
    pub length: u16,
    /// At least one class enabled ([`PasswordPolicy::new`]).
    #[schemars(extend("anyOf" = [
        {"required": ["lowercase"], "properties": {"lowercase": {"const": true}}},
        {"required": ["uppercase"], "properties": {"uppercase": {"const": true}}},
        {"required": ["digits"], "properties": {"digits": {"const": true}}},
        {"required": ["symbols"], "properties": {"symbols": {"const": true}}}
    ]))]
    pub alphabet: PasswordAlphabet,
}

impl PasswordPolicy {
    pub const MIN_LENGTH: u16 = 12;
    pub const MAX_LENGTH: u16 = 128;

    pub fn new(length: u16, alphabet: PasswordAlphabet) -> Result<Self, InvalidValue> {
        if !(Self::MIN_LENGTH..=Self::MAX_LENGTH).contains(&length) {
            return Err(InvalidValue {
                field: "password.length",
                rule: "must be between 12 and 128",
                got: length.to_string(),
            });
        }
        if alphabet.classes() == 0 {
            return Err(InvalidValue {
                field: "password.alphabet",
                rule: "must enable at least one of lowercase, uppercase, digits, symbols",
                got: "none".into(),
            });
        }
        Ok(Self { length, alphabet })
    }

    pub fn length(&self) -> u16 {
        self.length
    }

    pub fn alphabet(&self) -> PasswordAlphabet {
        self.alphabet
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            length: 24,
            alphabet: PasswordAlphabet {
                lowercase: true,
                uppercase: true,
                digits: true,
                symbols: true,
            },
        }
    }
}

impl TryFrom<PasswordPolicyFields> for PasswordPolicy {
    type Error = InvalidValue;
    fn try_from(f: PasswordPolicyFields) -> Result<Self, InvalidValue> {
        Self::new(f.length, f.alphabet)
    }
}

impl From<PasswordPolicy> for PasswordPolicyFields {
    fn from(p: PasswordPolicy) -> Self {
        Self {
            length: p.length,
            alphabet: p.alphabet,
        }
    }
}

/// The longest a session may last before it is checked in automatically, in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct SessionLength(u32);

impl JsonSchema for SessionLength {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SessionLength".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "description": "minutes, 1 to 10080 (7 days)",
            "minimum": 1,
            "maximum": 10080
        })
    }
}

impl SessionLength {
    pub const MAX_MINUTES: u32 = 7 * 24 * 60;

    pub fn minutes(minutes: u32) -> Result<Self, InvalidValue> {
        if (1..=Self::MAX_MINUTES).contains(&minutes) {
            Ok(Self(minutes))
        } else {
            Err(InvalidValue {
                field: "max_session_minutes",
                rule: "must be between 1 and 10080 (7 days)",
                got: minutes.to_string(),
            })
        }
    }

    pub fn as_minutes(&self) -> u32 {
        self.0
    }

    pub fn as_duration(&self) -> chrono::Duration {
        chrono::Duration::minutes(i64::from(self.0))
    }
}

impl TryFrom<u32> for SessionLength {
    type Error = InvalidValue;
    fn try_from(m: u32) -> Result<Self, InvalidValue> {
        Self::minutes(m)
    }
}

impl From<SessionLength> for u32 {
    fn from(l: SessionLength) -> u32 {
        l.0
    }
}

/// How a technician's named account is called: a template containing `{username}` once,
/// `msp-{username}` by default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountTemplate(String);

impl AccountTemplate {
    pub const PLACEHOLDER: &'static str = "{username}";

    pub fn parse(template: impl Into<String>) -> Result<Self, InvalidValue> {
        let template: String = template.into();
        let bad = |rule| InvalidValue {
            field: "named_account_template",
            rule,
            got: template.chars().take(80).collect(),
        };
        if template.matches(Self::PLACEHOLDER).count() != 1 {
            return Err(bad("must contain {username} exactly once"));
        }
        // The longest username must still give a valid account name.
        let longest = template.replace(Self::PLACEHOLDER, &"a".repeat(19));
        if AccountName::parse(longest).is_err() {
            return Err(bad(
                "must give a valid account name (a-z, 0-9, '_', '-', at most 32 characters) \
                 for any username of up to 19 characters",
            ));
        }
        Ok(Self(template))
    }

    pub fn account_for(&self, username: &Username) -> AccountName {
        let name = self.0.replace(Self::PLACEHOLDER, username.as_str());
        AccountName::parse(name).expect("AccountTemplate::parse checked the longest username")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AccountTemplate {
    fn default() -> Self {
        Self("msp-{username}".into())
    }
}

impl TryFrom<String> for AccountTemplate {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        Self::parse(s)
    }
}

impl From<AccountTemplate> for String {
    fn from(t: AccountTemplate) -> String {
        t.0
    }
}

impl JsonSchema for AccountTemplate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AccountTemplate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "must contain {username} exactly once and give a valid account name \
                for any username of up to 19 characters: around the placeholder only a-z, 0-9, \
                '.', '_' and '-', starting with a letter or '_', at most 13 characters in all",
            // The placeholder once, and what surrounds it as `AccountName` allows; the longest
            // username (19) must still fit 32 characters: 32 - 19 + 10 = 23.
            "pattern": "^([a-z_][a-z0-9._-]*)?\\{username\\}[a-z0-9._-]*$",
            "minLength": 10,
            "maxLength": 23
        })
    }
}

/// A tenant's just-in-time access policy (may be overridden per computer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "JitPolicyFields", into = "JitPolicyFields")]
#[schemars(with = "JitPolicyFields")]
pub struct JitPolicy(JitPolicyFields);

/// The fields of a [`JitPolicy`], as they are serialised and as an admin sets them. The
/// schema states [`JitPolicy::new`]'s rule across fields too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {
    "description": "reuse_existing_account only with on_check_in remove_from_group",
    "required": ["reuse_existing_account", "on_check_in"],
    "properties": {
        "reuse_existing_account": {"const": true},
        "on_check_in": {"const": "delete_account"}
    }
}))]
pub struct JitPolicyFields {
    /// Create accounts on the computer at check-out. When off, check-out needs a Latchkey
    /// account that already exists on the computer; its group membership and password are
    /// still managed just in time.
    pub provisioning_enabled: bool,
    /// The group that grants admin rights on the computer, e.g. `Administrators`, `sudo`.
    /// `null` (the default): each computer's own admin group, as its agent reported it at
    /// enrolment (`Administrators` on Windows when the agent did not say).
    #[serde(default)]
    pub admin_group: Option<GroupName>,
    /// What to do with the account when its last session is checked in.
    pub on_check_in: CheckInAction,
    /// Ephemeral mode: reuse the technician's previous JIT account on the computer instead of
    /// creating a new one. Only allowed with `on_check_in = remove_from_group`.
    pub reuse_existing_account: bool,
    /// Sessions are checked in automatically after this many minutes.
    pub max_session_minutes: SessionLength,
    pub password: PasswordPolicy,
    /// Rotate the password again when a session is checked in.
    pub rotate_on_check_in: bool,
    /// Named mode: the account name template, e.g. `msp-{username}`.
    pub named_account_template: AccountTemplate,
    /// What the agent does to the account's live logons when a session's access ends;
    /// `null` (the default): the login mode's default, which ends the logons and clears the
    /// cached sudo credentials in every mode.
    #[serde(default)]
    pub post_session_actions: Option<PostSessionActions>,
}

impl JitPolicy {
    pub fn new(fields: JitPolicyFields) -> Result<Self, InvalidValue> {
        if fields.reuse_existing_account && fields.on_check_in == CheckInAction::DeleteAccount {
            return Err(InvalidValue {
                field: "reuse_existing_account",
                rule: "can only be true when on_check_in is remove_from_group \
                       (a deleted account cannot be reused)",
                got: "true".into(),
            });
        }
        Ok(Self(fields))
    }

    pub fn fields(&self) -> &JitPolicyFields {
        &self.0
    }

    pub fn provisioning_enabled(&self) -> bool {
        self.0.provisioning_enabled
    }
    /// The admin group the policy names; `None`: each computer's own.
    pub fn admin_group(&self) -> Option<&GroupName> {
        self.0.admin_group.as_ref()
    }
    pub fn on_check_in(&self) -> CheckInAction {
        self.0.on_check_in
    }
    pub fn reuse_existing_account(&self) -> bool {
        self.0.reuse_existing_account
    }
    pub fn max_session(&self) -> SessionLength {
        self.0.max_session_minutes
    }
    pub fn password(&self) -> PasswordPolicy {
        self.0.password
    }
    pub fn rotate_on_check_in(&self) -> bool {
        self.0.rotate_on_check_in
    }
    pub fn named_account_template(&self) -> &AccountTemplate {
        &self.0.named_account_template
    }
    /// The post-session actions for a session in `mode`: the policy's, else the mode's
    /// default.
    pub fn post_session_actions(&self, mode: LoginMode) -> PostSessionActions {
        self.0
            .post_session_actions
            .unwrap_or_else(|| PostSessionActions::default_for(mode))
    }

    /// The secure default: provisioning on, each computer's own admin group, remove from
    /// group at check-in, no reuse, one hour, 24-character passwords, rotate at check-in.
    pub fn default_for(admin_group: Option<GroupName>) -> Self {
        Self(JitPolicyFields {
            provisioning_enabled: true,
            admin_group,
            on_check_in: CheckInAction::RemoveFromGroup,
            reuse_existing_account: false,
            max_session_minutes: SessionLength(60),
            password: PasswordPolicy::default(),
            rotate_on_check_in: true,
            named_account_template: AccountTemplate::default(),
            post_session_actions: None,
        })
    }
}

impl Default for JitPolicy {
    fn default() -> Self {
        Self::default_for(None)
    }
}

impl TryFrom<JitPolicyFields> for JitPolicy {
    type Error = InvalidValue;
    fn try_from(f: JitPolicyFields) -> Result<Self, InvalidValue> {
        Self::new(f)
    }
}

impl From<JitPolicy> for JitPolicyFields {
    fn from(p: JitPolicy) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's schema refuses what its constructors refuse, across fields too.
    #[test]
    fn the_policy_schema_states_the_rules_across_fields() {
        let schema = serde_json::to_value(schemars::schema_for!(JitPolicy)).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let default = serde_json::to_value(JitPolicy::default()).unwrap();
        let variants = [
            ("reuse_existing_account", serde_json::json!(true)),
            ("on_check_in", serde_json::json!("delete_account")),
            (
                "password",
                serde_json::json!({"length": 12, "alphabet": {
                "lowercase": false, "uppercase": false, "digits": true, "symbols": false}}),
            ),
            (
                "password",
                serde_json::json!({"length": 12, "alphabet": {
                "lowercase": false, "uppercase": false, "digits": false, "symbols": false}}),
            ),
            (
                "password",
                serde_json::json!({"length": 11, "alphabet": {
                "lowercase": true, "uppercase": false, "digits": false, "symbols": false}}),
            ),
            (
                "named_account_template",
                serde_json::json!("{username}{username}"),
            ),
            ("max_session_minutes", serde_json::json!(10081)),
            (
                "post_session_actions",
                serde_json::json!({"end_logons": true, "clear_sudo_credentials": false}),
            ),
            (
                "post_session_actions",
                serde_json::json!({"end_logons": true}),
            ),
            ("post_session_actions", serde_json::json!("end_logons")),
        ];
        let agree = |policy: &serde_json::Value| {
            let parsed = serde_json::from_value::<JitPolicy>(policy.clone()).is_ok();
            assert_eq!(validator.is_valid(policy), parsed, "{policy}");
        };
        agree(&default);
        for (field, value) in variants {
            let mut policy = default.clone();
            policy[field] = value;
            agree(&policy);
        }
        let mut both = default.clone();
        both["reuse_existing_account"] = serde_json::json!(true);
        both["on_check_in"] = serde_json::json!("delete_account");
        agree(&both);
        assert!(!validator.is_valid(&both));
    }

    #[test]
    fn login_mode_parses_and_names_the_choices_when_wrong() {
        assert_eq!("shared".parse::<LoginMode>().unwrap(), LoginMode::Shared);
        let err = "nammed".parse::<LoginMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "login_mode must be one of named, shared, ephemeral (got 'nammed')"
        );
    }

    #[test]
    fn post_session_actions_default_to_ending_logons_and_clearing_sudo_in_every_mode() {
        let policy = JitPolicy::default();
        for mode in LoginMode::ALL {
            assert_eq!(policy.post_session_actions(mode), PostSessionActions::ALL);
        }
        let mut fields = policy.fields().clone();
        fields.post_session_actions = Some(PostSessionActions::NONE);
        let none = JitPolicy::new(fields).unwrap();
        assert_eq!(
            none.post_session_actions(LoginMode::Named),
            PostSessionActions::NONE
        );
        // A policy stored before the setting existed loads, with the modes' defaults.
        let mut old = serde_json::to_value(&policy).unwrap();
        old.as_object_mut().unwrap().remove("post_session_actions");
        let loaded: JitPolicy = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, policy);
    }

    #[test]
    fn reuse_is_refused_together_with_delete_on_check_in() {
        let mut fields = JitPolicy::default().fields().clone();
        fields.on_check_in = CheckInAction::DeleteAccount;
        fields.reuse_existing_account = true;
        let err = JitPolicy::new(fields.clone()).unwrap_err();
        assert_eq!(err.field, "reuse_existing_account");
        fields.reuse_existing_account = false;
        JitPolicy::new(fields).unwrap();
    }

    #[test]
    fn password_policy_bounds() {
        let alphabet = PasswordPolicy::default().alphabet();
        assert!(PasswordPolicy::new(11, alphabet).is_err());
        assert!(PasswordPolicy::new(129, alphabet).is_err());
        let none = PasswordAlphabet {
            lowercase: false,
            uppercase: false,
            digits: false,
            symbols: false,
        };
        assert_eq!(
            PasswordPolicy::new(20, none).unwrap_err().field,
            "password.alphabet"
        );
        let json = serde_json::json!({"length": 8, "alphabet": alphabet});
        assert!(serde_json::from_value::<PasswordPolicy>(json).is_err());
    }

    #[test]
    fn session_length_bounds() {
        assert!(SessionLength::minutes(0).is_err());
        assert!(SessionLength::minutes(10081).is_err());
        assert_eq!(
            SessionLength::minutes(90)
                .unwrap()
                .as_duration()
                .num_minutes(),
            90
        );
    }

    #[test]
    fn account_template_makes_named_accounts() {
        let nik = Username::parse("nik").unwrap();
        assert_eq!(
            AccountTemplate::default().account_for(&nik).as_str(),
            "msp-nik"
        );
        let t = AccountTemplate::parse("{username}-msp").unwrap();
        assert_eq!(t.account_for(&nik).as_str(), "nik-msp");
        // Every character a username may have, an account name may have: no username can
        // make the template fail at check-out.
        for name in ["j.doe", "a_b-c.d", "z0123456789.abcdefg"] {
            let username = Username::parse(name).unwrap();
            assert_eq!(
                AccountTemplate::default().account_for(&username).as_str(),
                format!("msp-{name}")
            );
        }
        assert!(AccountTemplate::parse("msp").is_err());
        assert!(AccountTemplate::parse("{username}{username}").is_err());
        assert!(AccountTemplate::parse("a-very-long-prefix-{username}").is_err());
        assert!(AccountTemplate::parse("MSP-{username}").is_err());
    }

    #[test]
    fn policy_json_round_trips_and_refuses_unknown_fields() {
        let policy = JitPolicy::default();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json["admin_group"],
            serde_json::Value::Null,
            "each computer's own"
        );
        assert_eq!(json["on_check_in"], "remove_from_group");
        assert_eq!(
            serde_json::from_value::<JitPolicy>(json.clone()).unwrap(),
            policy
        );
        let mut extra = json;
        extra["surprise"] = true.into();
        assert!(serde_json::from_value::<JitPolicy>(extra).is_err());
    }
}
