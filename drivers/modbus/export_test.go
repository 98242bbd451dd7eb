package modbus

// ClassifyForTest exposes the error classification to the external tests.
func ClassifyForTest(err error) string {
	return [...]string{"connection", "exception", "slave gone", "timeout", "garbled"}[classify(err)]
}
