"""`authz users assign UID CLIENT_ID` / `authz users show UID`: a Firebase user's tenant.

`assign` sets the `clientId` custom claim through firebase-admin, keeping the user's other
custom claims. The user's next ID token carries it (after a sign-in or a token refresh;
tokens already issued keep their old claims until they expire). Works against the Auth
Emulator when FIREBASE_AUTH_EMULATOR_HOST is set, and needs Application Default
Credentials otherwise. The project is --project, else AUTHZ_FIREBASE_PROJECT_ID, else
GOOGLE_CLOUD_PROJECT; --tenant names an Identity Platform tenant.

Exit codes: 0 done, 1 no such user, 2 bad usage or client id, 4 Firebase unreachable or
refused. `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from authz.cli.common import UsageError, fail, operator_settings
from authz.tenants.client_id import validate_client_id

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_FIREBASE = 0, 1, 2, 4
CLAIM = "clientId"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = subparsers.add_parser("users", help="Firebase users' tenant (clientId claim)")
    actions = users.add_subparsers(dest="action", required=True)
    assign = actions.add_parser("assign", help="set a user's clientId custom claim")
    assign.add_argument("uid")
    assign.add_argument("client_id")
    show = actions.add_parser("show", help="a user's clientId, status and custom claims")
    show.add_argument("uid")
    for action in actions.choices.values():
        action.add_argument("--project", help="Firebase project id "
                                              "(default: $AUTHZ_FIREBASE_PROJECT_ID)")
        action.add_argument("--tenant", help="Identity Platform tenant id of the user")
        action.add_argument("--json", action="store_true", help="machine-readable output")
    users.set_defaults(handler=run)


def _fail(message: str, code: int) -> int:
    return fail("authz users", message, code)


def _auth_client(project: str, tenant: str | None) -> Any:
    import firebase_admin
    from firebase_admin import auth, tenant_mgt

    name = f"openai-relay-cli-{project}"
    try:
        app = firebase_admin.get_app(name)
    except ValueError:
        app = firebase_admin.initialize_app(options={"projectId": project}, name=name)
    if tenant:
        return tenant_mgt.auth_for_tenant(tenant, app=app)
    return auth.Client(app)


def run(args: argparse.Namespace) -> int:
    try:
        settings = operator_settings("settings")
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    project = (args.project or settings.firebase_project_id
               or settings.google_cloud_project or "").strip()
    if not project:
        return _fail("no Firebase project: use --project or set AUTHZ_FIREBASE_PROJECT_ID",
                     EXIT_USAGE)
    if args.action == "assign":
        try:
            validate_client_id(args.client_id)
        except ValueError as exc:
            return _fail(str(exc), EXIT_USAGE)
    from firebase_admin import auth, exceptions

    where = settings.firebase_emulator_host or "Firebase"
    try:
        client = _auth_client(project, args.tenant)
        user = client.get_user(args.uid)
        claims = dict(user.custom_claims or {})
        if args.action == "assign":
            claims[CLAIM] = args.client_id
            client.set_custom_user_claims(args.uid, claims)
            text = (f"user {args.uid}: {CLAIM}={args.client_id}; their next ID token (after "
                    "sign-in or refresh) carries it")
        else:
            text = "\n".join([f"uid: {user.uid}", f"email: {user.email}",
                              f"disabled: {user.disabled}", f"{CLAIM}: {claims.get(CLAIM)}"])
        result = {"uid": user.uid, "email": user.email, "disabled": bool(user.disabled),
                  "client_id": claims.get(CLAIM), "custom_claims": claims,
                  "tenant": args.tenant}
    except auth.UserNotFoundError:
        return _fail(f"no user {args.uid!r} in project {project}", EXIT_NOT_FOUND)
    except (exceptions.FirebaseError, ValueError) as exc:
        return _fail(f"{where} refused: {type(exc).__name__}: {exc}", EXIT_FIREBASE)
    except Exception as exc:  # credentials missing, network down: say which
        return _fail(f"cannot reach {where}: {type(exc).__name__}: {exc}"[:500], EXIT_FIREBASE)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK
