//! The access domain: role bindings — which user or IdP group holds which role over which part of the tenancy
//! tree (the whole deployment, an org, a project or one environment). The store keeps roles as labels; what a
//! role may do is the aggregator's `auth` module's business. Portable SQL only.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{Env, Org, Project, check_label, check_text, to_u64};
use crate::rows::Columns;

/// Longest user or group name a binding may name, in bytes.
pub const MAX_BINDING_SUBJECT_BYTES: usize = 256;

/// Most bindings listed (the aggregator keeps them all in memory to decide each request); the `LIMIT` in
/// [`list`] spells the same number.
pub const MAX_BINDINGS: u64 = 100_000;

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt {
        table: "role_bindings",
        reason,
    }
}

/// Whom a binding names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// One operator: the subject (`sub`, or the configured subject claim) of their OIDC token.
    User,
    /// Every operator whose token lists this group.
    Group,
}

impl SubjectKind {
    /// Stable name (stored, shown).
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::Group => "group",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "user" => Ok(SubjectKind::User),
            "group" => Ok(SubjectKind::Group),
            other => Err(corrupt(format!("subject_kind `{other}`"))),
        }
    }
}

/// Where a binding came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingSource {
    /// Granted through the API or `gait-aggregator access grant`; removed the same way.
    Api,
    /// Listed in the config file's `auth.bindings`; the set is replaced at every start.
    Config,
}

impl BindingSource {
    /// Stable name (stored, shown).
    pub fn as_str(self) -> &'static str {
        match self {
            BindingSource::Api => "api",
            BindingSource::Config => "config",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "api" => Ok(BindingSource::Api),
            "config" => Ok(BindingSource::Config),
            other => Err(corrupt(format!("source `{other}`"))),
        }
    }
}

/// The part of the tenancy tree a binding covers: everything (`org` absent), an org, a project of it, or one
/// environment of that project. A project without its org, or an env without its project, cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BindingScope {
    org: Option<Org>,
    project: Option<Project>,
    env: Option<Env>,
}

impl BindingScope {
    /// The whole deployment: every org, and what belongs to no org (the audit log, the CA).
    pub fn deployment() -> Self {
        Self {
            org: None,
            project: None,
            env: None,
        }
    }

    /// One org and everything in it.
    pub fn org(org: Org) -> Self {
        Self {
            org: Some(org),
            project: None,
            env: None,
        }
    }

    /// One project and its environments.
    pub fn project(org: Org, project: Project) -> Self {
        Self {
            org: Some(org),
            project: Some(project),
            env: None,
        }
    }

    /// One environment.
    pub fn env(org: Org, project: Project, env: Env) -> Self {
        Self {
            org: Some(org),
            project: Some(project),
            env: Some(env),
        }
    }

    /// From optional parts; `None` when a part is given without the one above it.
    pub fn from_parts(
        org: Option<Org>,
        project: Option<Project>,
        env: Option<Env>,
    ) -> Option<Self> {
        match (org, project, env) {
            (None, None, None) => Some(Self::deployment()),
            (Some(o), None, None) => Some(Self::org(o)),
            (Some(o), Some(p), None) => Some(Self::project(o, p)),
            (Some(o), Some(p), Some(e)) => Some(Self::env(o, p, e)),
            _ => None,
        }
    }

    /// The org, when the scope is inside one.
    pub fn org_part(&self) -> Option<&Org> {
        self.org.as_ref()
    }

    /// The project, when the scope is inside one.
    pub fn project_part(&self) -> Option<&Project> {
        self.project.as_ref()
    }

    /// The environment, when the scope is one.
    pub fn env_part(&self) -> Option<&Env> {
        self.env.as_ref()
    }

    /// Whether everything in `inner` is inside this scope.
    pub fn covers(&self, inner: &BindingScope) -> bool {
        fn part<T: PartialEq>(outer: &Option<T>, inner: &Option<T>) -> bool {
            match outer {
                None => true,
                Some(o) => inner.as_ref() == Some(o),
            }
        }
        part(&self.org, &inner.org)
            && part(&self.project, &inner.project)
            && part(&self.env, &inner.env)
    }

    fn columns(&self) -> (&str, &str, &str) {
        (
            self.org.as_ref().map_or("", |o| o.as_str()),
            self.project.as_ref().map_or("", |p| p.as_str()),
            self.env.as_ref().map_or("", |e| e.as_str()),
        )
    }

    fn from_columns(org: String, project: String, env: String) -> Result<Self, StoreError> {
        fn part<T>(name: &str, value: String) -> Result<Option<T>, StoreError>
        where
            T: TryFrom<String, Error = gait_identity::IdError>,
        {
            if value.is_empty() {
                return Ok(None);
            }
            T::try_from(value)
                .map(Some)
                .map_err(|e| corrupt(format!("{name}: {e}")))
        }
        Self::from_parts(
            part("org", org)?,
            part("project", project)?,
            part("env", env)?,
        )
        .ok_or_else(|| corrupt("a project or env without the part above it".into()))
    }
}

impl std::fmt::Display for BindingScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.org, &self.project, &self.env) {
            (None, _, _) => f.write_str("*"),
            (Some(o), None, _) => write!(f, "{o}"),
            (Some(o), Some(p), None) => write!(f, "{o}/{p}"),
            (Some(o), Some(p), Some(e)) => write!(f, "{o}/{p}/{e}"),
        }
    }
}

/// A binding to grant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NewBinding {
    /// User or group.
    pub kind: SubjectKind,
    /// The user's subject or the group's name.
    pub subject: String,
    /// The role's name (the aggregator's `auth` module knows the roles).
    pub role: String,
    /// Where it applies.
    pub scope: BindingScope,
}

impl NewBinding {
    fn validate(&self) -> Result<(), StoreError> {
        if self.subject.is_empty() {
            return Err(StoreError::invalid("binding.subject", "must not be empty"));
        }
        check_text("binding.subject", &self.subject, MAX_BINDING_SUBJECT_BYTES)?;
        check_label("binding.role", &self.role)
    }
}

/// A stored binding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleBinding {
    /// Row id.
    pub id: u64,
    /// User or group.
    pub kind: SubjectKind,
    /// The user's subject or the group's name.
    pub subject: String,
    /// The role's name.
    pub role: String,
    /// Where it applies.
    pub scope: BindingScope,
    /// API or config file.
    pub source: BindingSource,
    /// The actor who granted it (`config` for the config file).
    pub created_by: String,
    /// When, in milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
}

/// `SELECT <columns> FROM role_bindings` for `concat!`.
macro_rules! select_bindings {
    () => {
        "SELECT id, subject_kind, subject, role, org, project, env, source, created_by, created_unix_ms \
         FROM role_bindings"
    };
}

fn binding_row(row: &impl Columns) -> Result<RoleBinding, StoreError> {
    Ok(RoleBinding {
        id: to_u64("role_bindings", "id", row.int("id")?)?,
        kind: SubjectKind::parse(&row.text("subject_kind")?)?,
        subject: row.text("subject")?,
        role: row.text("role")?,
        scope: BindingScope::from_columns(
            row.text("org")?,
            row.text("project")?,
            row.text("env")?,
        )?,
        source: BindingSource::parse(&row.text("source")?)?,
        created_by: row.text("created_by")?,
        created_unix_ms: row.int("created_unix_ms")?,
    })
}

/// Every binding, by id.
pub(crate) async fn list(mut conn: Conn<'_>) -> Result<Vec<RoleBinding>, StoreError> {
    const SQL: &str = concat!(select_bindings!(), " ORDER BY id LIMIT 100000");
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("list_bindings"))?;
        found.iter().map(binding_row).collect()
    })
}

/// One binding by id.
pub(crate) async fn get(mut conn: Conn<'_>, id: u64) -> Result<Option<RoleBinding>, StoreError> {
    const SQL: &str = concat!(select_bindings!(), " WHERE id = $1");
    let id = crate::model::to_i64("binding.id", id)?;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("get_binding"))?
            .as_ref()
            .map(binding_row)
            .transpose()
    })
}

/// Grants `binding` (from `source`, by `created_by`). Granting an existing binding changes nothing and returns
/// the stored one with `false`.
pub(crate) async fn grant(
    mut conn: Conn<'_>,
    binding: &NewBinding,
    source: BindingSource,
    created_by: &str,
    now_ms: i64,
) -> Result<(RoleBinding, bool), StoreError> {
    const INSERT: &str = "INSERT INTO role_bindings (subject_kind, subject, role, org, project, env, source, \
         created_by, created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (subject_kind, subject, role, org, project, env) DO NOTHING";
    binding.validate()?;
    check_text(
        "binding.created_by",
        created_by,
        crate::model::MAX_TEXT_BYTES,
    )?;
    let (org, project, env) = binding.scope.columns();
    let inserted = db_run!(conn, |c| sqlx::query(INSERT)
        .bind(binding.kind.as_str())
        .bind(binding.subject.as_str())
        .bind(binding.role.as_str())
        .bind(org)
        .bind(project)
        .bind(env)
        .bind(source.as_str())
        .bind(created_by)
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("grant_binding"))?
        .rows_affected())
        == 1;
    const READ: &str = concat!(
        select_bindings!(),
        " WHERE subject_kind = $1 AND subject = $2 AND role = $3 AND org = $4 AND project = $5 AND env = $6"
    );
    let stored = db_run!(conn, |c| sqlx::query(READ)
        .bind(binding.kind.as_str())
        .bind(binding.subject.as_str())
        .bind(binding.role.as_str())
        .bind(org)
        .bind(project)
        .bind(env)
        .fetch_one(&mut *c)
        .await
        .map_err(db("grant_binding: read back"))
        .and_then(|row| binding_row(&row)))?;
    Ok((stored, inserted))
}

/// Removes binding `id`; returns it, or `None` when there is none.
pub(crate) async fn revoke(mut conn: Conn<'_>, id: u64) -> Result<Option<RoleBinding>, StoreError> {
    const DELETE: &str = "DELETE FROM role_bindings WHERE id = $1";
    let Some(found) = get(conn.reborrow(), id).await? else {
        return Ok(None);
    };
    let id = crate::model::to_i64("binding.id", id)?;
    db_run!(conn, |c| sqlx::query(DELETE)
        .bind(id)
        .execute(&mut *c)
        .await
        .map_err(db("revoke_binding"))?
        .rows_affected());
    Ok(Some(found))
}

/// What [`replace_config`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigBindingsApplied {
    /// Bindings of the set that were not stored before.
    pub added: Vec<RoleBinding>,
    /// Config bindings stored before that the set no longer lists.
    pub removed: Vec<RoleBinding>,
}

/// Makes the config-file bindings exactly `set` (idempotent): config rows not in the set are removed, missing
/// ones added. A binding also granted through the API stays an API binding. Run inside a transaction.
pub(crate) async fn replace_config(
    mut conn: Conn<'_>,
    set: &[NewBinding],
    now_ms: i64,
) -> Result<ConfigBindingsApplied, StoreError> {
    for binding in set {
        binding.validate()?;
    }
    let wanted: std::collections::HashSet<&NewBinding> = set.iter().collect();
    let mut applied = ConfigBindingsApplied::default();
    for stored in list(conn.reborrow()).await? {
        if stored.source != BindingSource::Config {
            continue;
        }
        let key = NewBinding {
            kind: stored.kind,
            subject: stored.subject.clone(),
            role: stored.role.clone(),
            scope: stored.scope.clone(),
        };
        if !wanted.contains(&key) {
            revoke(conn.reborrow(), stored.id).await?;
            applied.removed.push(stored);
        }
    }
    for binding in set {
        let (stored, inserted) = grant(
            conn.reborrow(),
            binding,
            BindingSource::Config,
            "config",
            now_ms,
        )
        .await?;
        if inserted {
            applied.added.push(stored);
        }
    }
    Ok(applied)
}
