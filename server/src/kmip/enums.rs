//! KMIP enumeration values this server uses (KMIP 1.4 section 9.1.3.2).

#![allow(missing_docs)] // Each constant is the KMIP enumeration value it is named after.

/// Operation.
pub mod operation {
    pub const CREATE: u32 = 0x01;
    pub const REGISTER: u32 = 0x03;
    pub const LOCATE: u32 = 0x08;
    pub const GET: u32 = 0x0A;
    pub const GET_ATTRIBUTES: u32 = 0x0B;
    pub const GET_ATTRIBUTE_LIST: u32 = 0x0C;
    pub const ADD_ATTRIBUTE: u32 = 0x0D;
    pub const MODIFY_ATTRIBUTE: u32 = 0x0E;
    pub const DELETE_ATTRIBUTE: u32 = 0x0F;
    pub const ACTIVATE: u32 = 0x12;
    pub const REVOKE: u32 = 0x13;
    pub const DESTROY: u32 = 0x14;
    pub const QUERY: u32 = 0x18;
    pub const DISCOVER_VERSIONS: u32 = 0x1E;

    /// Every operation served, in the order Query lists them.
    pub const SUPPORTED: [u32; 14] = [
        CREATE,
        REGISTER,
        LOCATE,
        GET,
        GET_ATTRIBUTES,
        GET_ATTRIBUTE_LIST,
        ADD_ATTRIBUTE,
        MODIFY_ATTRIBUTE,
        DELETE_ATTRIBUTE,
        ACTIVATE,
        REVOKE,
        DESTROY,
        QUERY,
        DISCOVER_VERSIONS,
    ];

    /// A name for logs and metrics.
    pub fn name(op: u32) -> &'static str {
        match op {
            CREATE => "Create",
            REGISTER => "Register",
            LOCATE => "Locate",
            GET => "Get",
            GET_ATTRIBUTES => "GetAttributes",
            GET_ATTRIBUTE_LIST => "GetAttributeList",
            ADD_ATTRIBUTE => "AddAttribute",
            MODIFY_ATTRIBUTE => "ModifyAttribute",
            DELETE_ATTRIBUTE => "DeleteAttribute",
            ACTIVATE => "Activate",
            REVOKE => "Revoke",
            DESTROY => "Destroy",
            QUERY => "Query",
            DISCOVER_VERSIONS => "DiscoverVersions",
            _ => "Unsupported",
        }
    }
}

/// Result Status.
pub mod result_status {
    pub const SUCCESS: u32 = 0;
    pub const OPERATION_FAILED: u32 = 1;
}

/// Result Reason.
pub mod result_reason {
    pub const ITEM_NOT_FOUND: u32 = 0x01;
    pub const RESPONSE_TOO_LARGE: u32 = 0x02;
    pub const INVALID_MESSAGE: u32 = 0x04;
    pub const OPERATION_NOT_SUPPORTED: u32 = 0x05;
    pub const MISSING_DATA: u32 = 0x06;
    pub const INVALID_FIELD: u32 = 0x07;
    pub const FEATURE_NOT_SUPPORTED: u32 = 0x08;
    pub const CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
    pub const ILLEGAL_OPERATION: u32 = 0x0B;
    pub const PERMISSION_DENIED: u32 = 0x0C;
    pub const INDEX_OUT_OF_BOUNDS: u32 = 0x0E;
    pub const KEY_FORMAT_TYPE_NOT_SUPPORTED: u32 = 0x10;
    pub const GENERAL_FAILURE: u32 = 0x100;
}

/// Batch Error Continuation Option.
pub mod batch_error {
    pub const CONTINUE: u32 = 1;
}

/// Object Type.
pub mod object_type {
    pub const SYMMETRIC_KEY: u32 = 2;
}

/// Cryptographic Algorithm.
pub mod algorithm {
    pub const AES: u32 = 3;
}

/// Key Format Type.
pub mod key_format {
    pub const RAW: u32 = 1;
    pub const TRANSPARENT_SYMMETRIC_KEY: u32 = 7;
}

/// State.
pub mod state {
    pub const PRE_ACTIVE: u32 = 1;
    pub const ACTIVE: u32 = 2;
    pub const DEACTIVATED: u32 = 3;
    pub const COMPROMISED: u32 = 4;
    pub const DESTROYED: u32 = 5;
    pub const DESTROYED_COMPROMISED: u32 = 6;
}

/// Revocation Reason Code.
pub mod revocation {
    pub const KEY_COMPROMISE: u32 = 2;
    pub const CA_COMPROMISE: u32 = 3;
}

/// Query Function.
pub mod query {
    pub const OPERATIONS: u32 = 1;
    pub const OBJECTS: u32 = 2;
    pub const SERVER_INFORMATION: u32 = 3;
    pub const APPLICATION_NAMESPACES: u32 = 4;
}

/// Credential Type.
pub mod credential {
    pub const DEVICE: u32 = 2;
}
