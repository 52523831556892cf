"""FederationAdmin: the composition of every admin mixin.

Each area adds its mixin here; RPCs not yet provided by a mixin answer UNIMPLEMENTED.
"""

from __future__ import annotations

from federation_gateway.admin.base import AdminBase
from federation_gateway.admin.enrollment import EnrollmentAdminMixin
from federation_gateway.admin.grants import GrantsAdminMixin
from federation_gateway.admin.query import QueryAdminMixin
from federation_gateway.admin.renewal import RenewalAdminMixin
from federation_gateway.admin.resources import ResourcesAdminMixin
from mosaic.federation.v1 import gateway_pb2_grpc


class FederationAdminServicer(
    GrantsAdminMixin,
    ResourcesAdminMixin,
    EnrollmentAdminMixin,
    QueryAdminMixin,
    RenewalAdminMixin,
    AdminBase,
    gateway_pb2_grpc.FederationAdminServicer,
):
    pass
