"""API token authentication with one narrow query (it runs on every API call)."""

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token scheme (``Authorization: Token <key>``), reading the user in one query.

    DRF's own class builds a select_related query per request; this reads the same
    row with a fixed statement. ``request.auth`` is the key.
    """

    _SQL = (
        "SELECT u.* FROM {user} u JOIN authtoken_token t ON t.user_id = u.id WHERE t.key = %s"
    )

    def authenticate_credentials(self, key):
        User = get_user_model()
        sql = self._SQL.format(user=User._meta.db_table)
        user = next(iter(User.objects.raw(sql, [key])), None)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (user, key)
