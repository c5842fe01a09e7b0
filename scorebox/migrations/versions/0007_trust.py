"""Trust: every version carries its signed manifest, and on PostgreSQL the database, not the
inserting role, records who and when: a trigger sets a version's ``created_at`` (now) and
``created_by`` (the session's role) and keeps them on update; every change of an alias, however
made (a direct UPDATE too), lands in the alias history by a trigger (SECURITY DEFINER, so the
roles that move aliases need no grant on the history and cannot write it themselves).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from scorebox.db import ALIAS_MOVES_TABLE, ALIASES_TABLE, MODELS_TABLE

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_AUDIT = f"""
CREATE FUNCTION scorebox_models_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := now();
        NEW.created_by := session_user;
    ELSE
        NEW.created_at := OLD.created_at;
        NEW.created_by := OLD.created_by;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER scorebox_models_audit BEFORE INSERT OR UPDATE ON {MODELS_TABLE}
    FOR EACH ROW EXECUTE FUNCTION scorebox_models_audit();

CREATE FUNCTION scorebox_aliases_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.moved_by := session_user;
    NEW.moved_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER scorebox_aliases_stamp BEFORE INSERT OR UPDATE ON {ALIASES_TABLE}
    FOR EACH ROW EXECUTE FUNCTION scorebox_aliases_stamp();

CREATE FUNCTION scorebox_aliases_history() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    action text := coalesce(nullif(current_setting('scorebox.alias_action', true), ''), 'direct');
    reason text := nullif(current_setting('scorebox.alias_reason', true), '');
    declared text := nullif(current_setting('scorebox.actor', true), '');
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR OLD.name IS DISTINCT FROM NEW.name
            OR OLD.alias IS DISTINCT FROM NEW.alias) THEN
        INSERT INTO {ALIAS_MOVES_TABLE} (name, alias, from_tag, to_tag, action, reason, moved_by,
                                         declared_by)
        VALUES (OLD.name, OLD.alias, OLD.tag, NULL,
                CASE WHEN action = 'direct' THEN 'direct' ELSE 'remove' END, reason, session_user,
                declared);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (OLD.name IS DISTINCT FROM NEW.name
            OR OLD.alias IS DISTINCT FROM NEW.alias)) THEN
        INSERT INTO {ALIAS_MOVES_TABLE} (name, alias, from_tag, to_tag, action, reason, moved_by,
                                         declared_by)
        VALUES (NEW.name, NEW.alias, NULL, NEW.tag, action, reason, session_user, declared);
    ELSIF TG_OP = 'UPDATE' AND OLD.tag IS DISTINCT FROM NEW.tag THEN
        INSERT INTO {ALIAS_MOVES_TABLE} (name, alias, from_tag, to_tag, action, reason, moved_by,
                                         declared_by)
        VALUES (NEW.name, NEW.alias, OLD.tag, NEW.tag, action, reason, session_user, declared);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER scorebox_aliases_history AFTER INSERT OR UPDATE OR DELETE ON {ALIASES_TABLE}
    FOR EACH ROW EXECUTE FUNCTION scorebox_aliases_history();
"""


def upgrade() -> None:
    # 0005 creates the registry from scorebox/db.py's layout, which has these columns already.
    inspector = sa.inspect(op.get_bind())
    if "signature" not in {c["name"] for c in inspector.get_columns(MODELS_TABLE)}:
        op.add_column(MODELS_TABLE, sa.Column("signature", sa.Text))
    if "declared_by" not in {c["name"] for c in inspector.get_columns(ALIAS_MOVES_TABLE)}:
        op.add_column(ALIAS_MOVES_TABLE, sa.Column("declared_by", sa.Text))
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite (the demo) has no roles: the application writes these fields there
    # Rows written before: a date in the future is no longer allowed to hold `latest` forever.
    op.execute(f"UPDATE {MODELS_TABLE} SET created_at = now() WHERE created_at > now()")
    op.execute(_AUDIT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER scorebox_aliases_history ON {ALIASES_TABLE}")
        op.execute(f"DROP TRIGGER scorebox_aliases_stamp ON {ALIASES_TABLE}")
        op.execute(f"DROP TRIGGER scorebox_models_audit ON {MODELS_TABLE}")
        op.execute("DROP FUNCTION scorebox_aliases_history()")
        op.execute("DROP FUNCTION scorebox_aliases_stamp()")
        op.execute("DROP FUNCTION scorebox_models_audit()")
    op.drop_column(ALIAS_MOVES_TABLE, "declared_by")
    op.drop_column(MODELS_TABLE, "signature")
