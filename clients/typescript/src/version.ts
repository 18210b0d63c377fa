/** The protobuf package this client speaks; its `v1` is the package version's major number. */
export const CONTRACT_PACKAGE = "chat.v1";
/** The contract's major version. Within it, `buf breaking` (make breaking, in CI) refuses any
 * change that would break a caller built against an earlier release. */
export const CONTRACT_VERSION = 1;
