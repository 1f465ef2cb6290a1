package cli

import "reflect"

// rawBody reads the Body field every generated response struct has; nil
// when the response itself is nil (the request failed).
func rawBody(r any) []byte {
	v := reflect.ValueOf(r)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return nil
	}
	f := v.Elem().FieldByName("Body")
	if !f.IsValid() || f.Kind() != reflect.Slice {
		return nil
	}
	return f.Bytes()
}
