package redfish

import (
	"net/http"
	"strings"
)

// registry is the Base message registry the error bodies cite: the version
// the public-rackmount1 mockup carries (Registries/Base.1.5.0.json).
const registry = "Base.1.5.0"

// message is one entry of the Base registry, copied from the mockup's
// Registries/Base.1.5.0.json; Message uses %1, %2 for its arguments.
type message struct {
	Message, Severity, Resolution string
}

var baseMessages = map[string]message{
	"GeneralError":                     {"A general error has occurred. See Resolution for information on how to resolve the error.", "Critical", "None."},
	"MalformedJSON":                    {"The request body submitted was malformed JSON and could not be parsed by the receiving service.", "Critical", "Ensure that the request body is valid JSON and resubmit the request."},
	"EmptyJSON":                        {"The request body submitted contained an empty JSON object and the service is unable to process it.", "Warning", "Add properties in the JSON object and resubmit the request."},
	"PropertyValueNotInList":           {"The value %1 for the property %2 is not in the list of acceptable values.", "Warning", "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed."},
	"PropertyUnknown":                  {"The property %1 is not in the list of valid properties for the resource.", "Warning", "Remove the unknown property from the request body and resubmit the request if the operation failed."},
	"PropertyValueTypeError":           {"The value %1 for the property %2 is of a different type than the property can accept.", "Warning", "Correct the value for the property in the request body and resubmit the request if the operation failed."},
	"PropertyNotWritable":              {"The property %1 is a read only property and cannot be assigned a value.", "Warning", "Remove the property from the request body and resubmit the request if the operation failed."},
	"ActionParameterMissing":           {"The action %1 requires the parameter %2 to be present in the request body.", "Critical", "Supply the action with the required parameter in the request body when the request is resubmitted."},
	"ActionParameterUnknown":           {"The action %1 was submitted with the invalid parameter %2.", "Warning", "Correct the invalid parameter and resubmit the request if the operation failed."},
	"ActionParameterValueTypeError":    {"The value %1 for the parameter %2 in the action %3 is of a different type than the parameter can accept.", "Warning", "Correct the value for the parameter in the request body and resubmit the request if the operation failed."},
	"ResourceNotFound":                 {"The requested resource of type %1 named %2 was not found.", "Critical", "Provide a valid resource identifier and resubmit the request."},
	"ResourceMissingAtURI":             {"The resource at the URI %1 was not found.", "Critical", "Place a valid resource at the URI or correct the URI and resubmit the request."},
	"NoValidSession":                   {"There is no valid session established with the implementation.", "Critical", "Establish as session before attempting any operations."},
	"InternalError":                    {"The request failed due to an internal service error.  The service is still operational.", "Critical", "Resubmit the request.  If the problem persists, consider resetting the service."},
	"SessionLimitExceeded":             {"The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation.", "Critical", "Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions (if supported)."},
	"CreateFailedMissingReqProperties": {"The create operation failed because the required property %1 was missing from the request.", "Critical", "Correct the body to include the required property with a valid value and resubmit the request if the operation failed."},
}

// extInfo is one @Message.ExtendedInfo entry (Message.v1_1_1).
type extInfo map[string]any

// msg builds the extended info for Base registry message id with args.
func msg(id string, args ...string) extInfo {
	m, ok := baseMessages[id]
	if !ok {
		m = baseMessages["GeneralError"]
		id = "GeneralError"
	}
	text := m.Message
	for i := len(args) - 1; i >= 0; i-- { // from the end, so %1 does not eat %10
		text = strings.ReplaceAll(text, "%"+string(rune('1'+i)), args[i])
	}
	e := extInfo{
		"@odata.type": "#Message.v1_1_1.Message",
		"MessageId":   registry + "." + id,
		"Message":     text,
		"Severity":    m.Severity,
		"Resolution":  m.Resolution,
	}
	if len(args) > 0 {
		e["MessageArgs"] = args
	}
	return e
}

// general is a GeneralError entry whose message and resolution say what
// happened, for the cases Base 1.5.0 has no message of its own (405, 412).
func general(text, resolution string) extInfo {
	return extInfo{
		"@odata.type": "#Message.v1_1_1.Message",
		"MessageId":   registry + ".GeneralError",
		"Message":     text,
		"Severity":    "Critical",
		"Resolution":  resolution,
	}
}

// writeError writes a Redfish error response: the top-level code is
// GeneralError, as the spec recommends when details are in ExtendedInfo.
func writeError(w http.ResponseWriter, status int, infos ...extInfo) {
	body := map[string]any{
		"error": map[string]any{
			"code":                  registry + ".GeneralError",
			"message":               "A general error has occurred. See ExtendedInfo for more information.",
			"@Message.ExtendedInfo": infos,
		},
	}
	writeJSON(w, status, body)
}
