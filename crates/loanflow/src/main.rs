//! The `loanflow` binary: every service as a subcommand, so one artefact ships them
//! all. `loanflow all` runs the whole system in one process, for a laptop or a demo;
//! in production each service runs as its own process (and levels as several).

use std::path::{Path, PathBuf};

use anyhow::Context;

use clap::{Parser, Subcommand};

use loanflow_platform::db;
use loanflow_platform::settings::Mode;
use loanflow_platform::shutdown::{self, Running};
use loanflow_platform::{telemetry, CancellationToken, Settings};

#[derive(Parser)]
#[command(name = "loanflow", version, about = "Asynchronous multi-level loan approval")]
struct Cli {
    /// Directory of `*.toml` files layered over the built-in defaults.
    #[arg(long, global = true, default_value = "config", env = "LOANFLOW_CONFIG_DIR")]
    config: PathBuf,
    /// Development mode: adds the contract's sandbox people (published tokens) and turns
    /// the submission limit off. Only this flag turns it on; never use it where real
    /// loans are decided.
    #[arg(long, global = true)]
    development: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The public API, the outbox relay and the status projection.
    Intake,
    /// The simulated credit bureau.
    Bureau,
    /// One approval level (kyc, credit, underwriting, manager).
    Level { name: String },
    /// Books approved loans.
    Ledger,
    /// Creates every service's schema and runs its migrations, then exits.
    Migrate,
    /// Every service in one process.
    All,
    /// Rehearses a scenario (examples/*.toml) against a running system, as a client.
    Simulate {
        scenario: PathBuf,
        /// The intake.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The bureau, for scenarios with faults.
        #[arg(long, default_value = "http://127.0.0.1:8090")]
        bureau_url: String,
        /// Where the report folder is written.
        #[arg(long, default_value = "reports")]
        reports: PathBuf,
        /// The operator's token, for the bureau's fault switch (the sandbox operator's
        /// by default, which `make run` configures).
        #[arg(long, env = "LOANFLOW_OPERATOR_TOKEN", default_value = "sandbox-operator-token", hide_env_values = true)]
        operator_token: String,
    },
    /// A process of the synchronous twin, for the benchmark's comparison only: the same
    /// rules and booking over HTTP, behind `twin.secret`. Never part of `make run`.
    Twin {
        #[command(subcommand)]
        service: TwinService,
    },
    /// Prints a new random bearer token and the digest that configuration holds for it
    /// (`token_sha256` of an `[[intake.approvers]]` or `[[operators]]` entry).
    Token,
    /// Prints the broker's setup (vhost, users without passwords, permissions, policy,
    /// topology) as RabbitMQ definitions, for a deployment that imports them.
    BrokerDefinitions,
    /// Prints the AsyncAPI 3.0 document of the broker's exchanges, queues and messages
    /// (`schema/asyncapi.json` is the committed copy).
    Asyncapi,
    /// The dead-letter queue: list what is there, replay it.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Asks a health address (`http://127.0.0.1:9000/health/ready`) and exits 0 if it
    /// answers 2xx: a container's health check, with no other tool in the image.
    Probe { url: String },
    /// The audit trail of human acts (the intake's).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Checks every row's hash and link; names each row changed or out of the chain,
    /// and exits non-zero if any is.
    Verify,
}

#[derive(Subcommand)]
enum TwinService {
    /// An intake that calls the twin levels and ledger in turn and answers with the decision.
    Intake,
    /// One level's rule, answered over HTTP.
    Level { name: String },
    /// The booking, answered over HTTP.
    Ledger,
}

#[derive(Subcommand)]
enum DlqAction {
    /// Reference, origin, reason, attempts and age of every dead letter (no personal data).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sends dead letters back to the queue they came from, with a fresh retry budget.
    Replay {
        /// Replay only this application's dead letters.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        reference: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
        /// Who replays (written to the audit trail).
        #[arg(long, env = "LOANFLOW_OPERATOR", default_value = "operator")]
        operator: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Simulate { scenario, url, bureau_url, reports, operator_token } = &cli.command {
        return simulate(scenario, url, bureau_url, reports, operator_token).await;
    }
    if let Command::Probe { url } = &cli.command {
        let answered =
            reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?.get(url).send().await;
        match answered {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => anyhow::bail!("{url} answered {}", r.status()),
            Err(e) => anyhow::bail!("{url}: {}", e.without_url()),
        }
    }
    if let Command::Token = &cli.command {
        let token = loanflow_platform::secret::new_token();
        println!("token (give it to its holder; it is not kept anywhere): {token}");
        println!("token_sha256 = \"{}\"", loanflow_platform::secret::TokenHash::of(&token).to_hex());
        return Ok(());
    }
    let mode = if cli.development { Mode::Development } else { Mode::Production };
    let settings = Settings::load(&cli.config, mode).context("loading configuration")?;
    let telemetry = telemetry::init(&settings.telemetry, &service_name(&cli.command));
    if mode == Mode::Development {
        announce_development(&settings);
    }
    let outcome = serve(cli.command, settings).await;
    // Whatever the outcome, the spans still buffered are sent.
    telemetry.shutdown();
    outcome
}

/// What traces call this process (OpenTelemetry's `service.name`).
fn service_name(command: &Command) -> String {
    match command {
        Command::Intake => "loanflow-intake".to_owned(),
        Command::Bureau => "loanflow-bureau".to_owned(),
        Command::Level { name } => format!("loanflow-level-{name}"),
        Command::Ledger => "loanflow-ledger".to_owned(),
        Command::Twin { .. } => "loanflow-twin".to_owned(),
        _ => "loanflow".to_owned(),
    }
}

/// Runs the service or the command that `command` names until it is done, or stopped.
async fn serve(command: Command, settings: Settings) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let one = |name: &str, running: Running| vec![(name.to_owned(), running)];
    let running = match command {
        Command::Migrate => return migrate(&settings).await,
        Command::Simulate { .. } | Command::Token | Command::Probe { .. } => {
            unreachable!("handled above: they need no configuration")
        }
        Command::Dlq { action } => return dlq(&settings, action).await,
        Command::Audit { action: AuditAction::Verify } => return audit_verify(&settings).await,
        Command::Asyncapi => {
            let document = loanflow_platform::broker::asyncapi::document(&settings);
            println!("{}", serde_json::to_string_pretty(&document)?);
            return Ok(());
        }
        Command::BrokerDefinitions => {
            let definitions = loanflow_platform::broker::access::definitions(&settings);
            println!("{}", serde_json::to_string_pretty(&definitions)?);
            return Ok(());
        }
        Command::Intake => one("intake", loanflow_intake::start(settings, stop.clone()).await?),
        Command::Bureau => one("bureau", loanflow_bureau::start(settings, stop.clone()).await?),
        Command::Ledger => one("ledger", loanflow_ledger::start(settings, stop.clone()).await?),
        Command::Level { name } => one(&name, loanflow_level::start(settings, &name, stop.clone()).await?.0),
        Command::All => start_all(settings, stop.clone()).await?,
        Command::Twin { service: TwinService::Intake } => {
            one("twin intake", loanflow_intake::twin::start(settings, stop.clone()).await?)
        }
        Command::Twin { service: TwinService::Level { name } } => {
            one(&format!("twin {name}"), loanflow_level::twin::start(settings, &name, stop.clone()).await?)
        }
        Command::Twin { service: TwinService::Ledger } => {
            one("twin ledger", loanflow_ledger::twin::start(settings, stop.clone()).await?)
        }
    };
    shutdown::supervise(running, stop).await.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped");
    Ok(())
}

/// Says, on the terminal and in the log, that the sandbox people are in.
fn announce_development(settings: &Settings) {
    let approvers: Vec<String> =
        settings.intake.approvers.iter().map(|a| format!("{} ({})", a.name, a.levels.join(", "))).collect();
    let operators: Vec<&str> = settings.operators.iter().map(|o| o.name.as_str()).collect();
    eprintln!(
        "loanflow: DEVELOPMENT MODE — sandbox approvers {}, operator {}, with the contract's published \
         tokens; no submission limit. Never run it like this where real loans are decided.",
        approvers.join(", "),
        operators.join(", ")
    );
    tracing::warn!(security_event = "development_mode", "development mode: sandbox people with published tokens");
}

async fn start_all(settings: Settings, stop: CancellationToken) -> anyhow::Result<Vec<(String, Running)>> {
    let mut running = vec![("bureau".to_owned(), loanflow_bureau::start(settings.clone(), stop.clone()).await?)];
    running.push(("ledger".to_owned(), loanflow_ledger::start(settings.clone(), stop.clone()).await?));
    for level in &settings.chain.names() {
        running.push((format!("level {level}"), loanflow_level::start(settings.clone(), level, stop.clone()).await?.0));
    }
    let intake = loanflow_intake::start(settings, stop).await?;
    if let Some(addr) = intake.addr {
        println!("loanflow is up: http://{addr}/  (API: http://{addr}/api/loans; Ctrl-C stops)");
    }
    running.push(("intake".to_owned(), intake));
    Ok(running)
}

async fn simulate(
    scenario: &Path,
    url: &str,
    bureau_url: &str,
    reports: &Path,
    operator_token: &str,
) -> anyhow::Result<()> {
    let scenario = loanflow_simulate::Scenario::load(scenario)?;
    let options = loanflow_simulate::Options {
        url: url.trim_end_matches('/').to_owned(),
        bureau_url: bureau_url.trim_end_matches('/').to_owned(),
        report_dir: reports.to_owned(),
        approver_tokens: None,
        operator_token: operator_token.to_owned(),
        progress: true,
    };
    let outcome = loanflow_simulate::run(&scenario, &options).await?;
    print!("{}", outcome.report.table());
    let dir = outcome.report.write(reports)?;
    println!("report: {}", dir.display());
    if outcome.failures.is_empty() {
        println!("expectations met");
        Ok(())
    } else {
        for failure in &outcome.failures {
            println!("NOT MET: {failure}");
        }
        std::process::exit(1);
    }
}

async fn dlq(settings: &Settings, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { json } => {
            let letters = loanflow_platform::dlq::list(settings).await?;
            if json {
                for letter in &letters {
                    println!("{}", serde_json::to_string(letter)?);
                }
                return Ok(());
            }
            println!("{:<28} {:<28} {:>8} {:>8}  reason", "reference", "origin queue", "attempts", "age (s)");
            for l in &letters {
                let age = l.age_seconds.map_or_else(|| "-".to_owned(), |a| a.to_string());
                println!("{:<28} {:<28} {:>8} {:>8}  {}", l.reference, l.origin_queue, l.attempts, age, l.reason);
            }
            println!("{} dead letter(s)", letters.len());
        }
        DlqAction::Replay { reference, all: _, operator } => {
            let pool = db::pool(&settings.intake.database);
            let replayed =
                loanflow_intake::operations::replay_dead_letters(settings, &pool, &operator, reference.as_deref())
                    .await?;
            println!("replayed {replayed} dead letter(s)");
        }
    }
    Ok(())
}

/// `loanflow audit verify`: reads the intake's audit trail as the intake's role.
async fn audit_verify(settings: &Settings) -> anyhow::Result<()> {
    let pool = db::pool(&settings.intake.database);
    let verified = db::blocking(&pool, loanflow_platform::audit::verify).await.context("reading the audit trail")?;
    for found in &verified.breaks {
        println!("BROKEN: {found}");
    }
    println!(
        "audit trail of schema {}: {} row(s), head {}, {}",
        settings.intake.database.schema,
        verified.rows,
        verified.head.as_deref().unwrap_or("(empty)"),
        if verified.breaks.is_empty() { "intact".to_owned() } else { format!("{} break(s)", verified.breaks.len()) }
    );
    if verified.breaks.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// The setup step: the broker's vhost, users, permissions and topology, then every
/// service's schema. Run before the services start (`make run` does).
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    loanflow_platform::broker::access::provision(settings).await.context("creating the broker's users")?;
    let setup = settings.broker.acting_as(loanflow_platform::broker::access::SETUP);
    let conn =
        loanflow_platform::broker::connect(&setup).await.context("connecting to the broker as the setup user")?;
    let channel = conn.create_channel().await?;
    loanflow_platform::broker::Topology::new(settings).declare(&channel).await?;
    let _ = conn.close(200, "bye".into()).await;
    loanflow_platform::broker::access::withdraw_administrator(settings).await?;
    println!(
        "broker vhost {}: users, permissions and topology declared",
        loanflow_platform::broker::access::vhost_of(&settings.broker.url)
    );
    let mut targets = vec![
        (settings.intake.database.clone(), loanflow_intake::SCHEMA),
        (settings.ledger.database.clone(), loanflow_ledger::SCHEMA),
    ];
    for level in &settings.chain.names() {
        let database = settings.levels.database_for(level).map_err(anyhow::Error::msg)?;
        targets.push((database, loanflow_level::SCHEMA));
    }
    for (database, migrations) in targets {
        db::migrated_pool(&database, migrations)
            .await
            .with_context(|| format!("migrating schema {} as {}", database.schema, database.owner_role()))?;
        println!(
            "schema {}: up to date (owner {}, runtime role {})",
            database.schema,
            database.owner_role(),
            database.role
        );
    }
    Ok(())
}
