package store

// SchemaV1 is the first schema, for tests that build a database as it was.
const SchemaV1 = schemaV1
