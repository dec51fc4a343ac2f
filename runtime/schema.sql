-- The jambonz tables the sidecar reads and writes, with jambonz's names, types, NOT NULL and
-- defaults (SPEC 5.5), so the service runs unchanged against a database jambonz created.
-- Every statement is idempotent: `sbc-sidecar db init` may run it on an existing database.

CREATE TABLE IF NOT EXISTS webhooks
(
webhook_sid CHAR(36) NOT NULL UNIQUE,
url VARCHAR(1024) NOT NULL,
method ENUM('GET','POST') NOT NULL DEFAULT 'POST',
username VARCHAR(255),
password VARCHAR(255),
PRIMARY KEY (webhook_sid)
);

CREATE TABLE IF NOT EXISTS service_providers
(
service_provider_sid CHAR(36) NOT NULL UNIQUE,
name VARCHAR(64) NOT NULL UNIQUE,
description VARCHAR(255),
root_domain VARCHAR(128) UNIQUE,
registration_hook_sid CHAR(36),
ms_teams_fqdn VARCHAR(255),
PRIMARY KEY (service_provider_sid)
);

CREATE TABLE IF NOT EXISTS accounts
(
account_sid CHAR(36) NOT NULL UNIQUE,
name VARCHAR(64) NOT NULL,
sip_realm VARCHAR(132) UNIQUE,
service_provider_sid CHAR(36) NOT NULL,
registration_hook_sid CHAR(36),
queue_event_hook_sid CHAR(36),
device_calling_application_sid CHAR(36),
is_active BOOLEAN NOT NULL DEFAULT true,
created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
plan_type ENUM('trial','free','paid') NOT NULL DEFAULT 'trial',
stripe_customer_id VARCHAR(56),
webhook_secret VARCHAR(36) NOT NULL,
disable_cdrs BOOLEAN NOT NULL DEFAULT 0,
trial_end_date DATETIME,
deactivated_reason VARCHAR(255),
device_to_call_ratio INTEGER NOT NULL DEFAULT 5,
PRIMARY KEY (account_sid)
);

CREATE TABLE IF NOT EXISTS clients
(
client_sid CHAR(36) NOT NULL UNIQUE,
account_sid CHAR(36) NOT NULL,
is_active BOOLEAN NOT NULL DEFAULT 1,
username VARCHAR(64),
password VARCHAR(1024),
allow_direct_app_calling BOOLEAN NOT NULL DEFAULT 1,
allow_direct_queue_calling BOOLEAN NOT NULL DEFAULT 1,
allow_direct_user_calling BOOLEAN NOT NULL DEFAULT 1,
PRIMARY KEY (client_sid)
);

CREATE TABLE IF NOT EXISTS voip_carriers
(
voip_carrier_sid CHAR(36) NOT NULL UNIQUE,
name VARCHAR(64) NOT NULL,
description VARCHAR(255),
account_sid CHAR(36),
service_provider_sid CHAR(36),
application_sid CHAR(36),
e164_leading_plus BOOLEAN NOT NULL DEFAULT false,
requires_register BOOLEAN NOT NULL DEFAULT false,
register_username VARCHAR(64),
register_sip_realm VARCHAR(64),
register_password VARCHAR(64),
tech_prefix VARCHAR(16),
inbound_auth_username VARCHAR(64),
inbound_auth_password VARCHAR(64),
diversion VARCHAR(32),
is_active BOOLEAN NOT NULL DEFAULT true,
created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
register_from_user VARCHAR(128),
register_from_domain VARCHAR(255),
register_public_ip_in_contact BOOLEAN NOT NULL DEFAULT false,
register_status VARCHAR(4096),
outbound_sip_proxy VARCHAR(255),
trunk_type ENUM('static_ip','auth','reg') NOT NULL DEFAULT 'static_ip',
PRIMARY KEY (voip_carrier_sid)
);

CREATE TABLE IF NOT EXISTS sip_gateways
(
sip_gateway_sid CHAR(36),
ipv4 VARCHAR(128) NOT NULL,
netmask INTEGER NOT NULL DEFAULT 32,
port INTEGER,
inbound BOOLEAN NOT NULL,
outbound BOOLEAN NOT NULL,
voip_carrier_sid CHAR(36) NOT NULL,
is_active BOOLEAN NOT NULL DEFAULT 1,
send_options_ping BOOLEAN NOT NULL DEFAULT 0,
use_sips_scheme BOOLEAN NOT NULL DEFAULT 0,
pad_crypto BOOLEAN NOT NULL DEFAULT 0,
protocol ENUM('udp','tcp','tls','tls/srtp') DEFAULT 'udp',
remove_ice BOOLEAN NOT NULL DEFAULT 0,
dtls_off BOOLEAN NOT NULL DEFAULT 0,
PRIMARY KEY (sip_gateway_sid)
);

CREATE TABLE IF NOT EXISTS system_information
(
domain_name VARCHAR(255),
sip_domain_name VARCHAR(255),
monitoring_domain_name VARCHAR(255)
);

CREATE TABLE IF NOT EXISTS sbc_addresses
(
sbc_address_sid CHAR(36) NOT NULL UNIQUE,
ipv4 VARCHAR(255) NOT NULL,
port INTEGER NOT NULL DEFAULT 5060,
tls_port INTEGER,
wss_port INTEGER,
service_provider_sid CHAR(36),
last_updated DATETIME,
PRIMARY KEY (sbc_address_sid)
);

CREATE TABLE IF NOT EXISTS products
(
product_sid CHAR(36) NOT NULL UNIQUE,
name VARCHAR(32) NOT NULL,
category ENUM('api_rate','voice_call_session','device') NOT NULL,
PRIMARY KEY (product_sid)
);

CREATE TABLE IF NOT EXISTS account_subscriptions
(
account_subscription_sid CHAR(36) NOT NULL UNIQUE,
account_sid CHAR(36) NOT NULL,
pending BOOLEAN NOT NULL DEFAULT false,
effective_start_date DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
effective_end_date DATETIME,
change_reason VARCHAR(255),
PRIMARY KEY (account_subscription_sid)
);

CREATE TABLE IF NOT EXISTS account_products
(
account_product_sid CHAR(36) NOT NULL UNIQUE,
account_subscription_sid CHAR(36) NOT NULL,
product_sid CHAR(36) NOT NULL,
quantity INTEGER NOT NULL,
PRIMARY KEY (account_product_sid)
);

-- The sidecar's own table: the history's cold tier (projections/archive.py). One row per step of an AOR's story
-- older than SIDECAR_HISTORY_HOT_S, kept for SIDECAR_RETENTION_S; at_ms is the step's score in Redis (a run's
-- last refresh), step is the step as the history projection wrote it.
CREATE TABLE IF NOT EXISTS sidecar_history
(
aor VARCHAR(255) NOT NULL,
step_id VARCHAR(64) NOT NULL,
at_ms BIGINT NOT NULL,
step JSON NOT NULL,
PRIMARY KEY (aor, step_id),
KEY sidecar_history_aor_at (aor, at_ms),
KEY sidecar_history_at (at_ms)
);
